"""The auditor's report: builds, parses as HTML, carries its figures and verdict; exports agree."""

from __future__ import annotations

import base64
import csv
import io
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path

import pytest

from dp.accounting import SampledGaussian, Skellam, compute_epsilon
from dp.audit.privacy_ledger import PrivacyLedger, PrivacyUnit
from dp.audit.report import AuditReport, build_report, render_csv, render_html, render_json, run_audit
from dp.audit.round_records import RoundOutcome, RoundPrivacy, RoundStage, ServerLedger, ServerRoundRecord
from dp.budget import BudgetExceeded, BudgetGuard, BudgetPolicy, UnitBudget
from secagg.config import ProtocolMode
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom

DELTA = 1e-5
PARTIES = ("bank-a", "bank-b", "bank-c")
ROUNDS = ("round-0", "round-1", "round-2", "round-3")
NOISE = Skellam(l1_sensitivity=400.0, l2_sensitivity=20.0, variance=4.0e4, steps=1)
SERVER_SEED = 100
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def fixed_clock() -> Callable[[], datetime]:
    ticks = itertools.count()
    return lambda: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=next(ticks))


def party_key(party: str) -> SigningKey:
    return SigningKey.generate(DeterministicRandom.from_int(1 + PARTIES.index(party) if party in PARTIES else 50))


def training(party: str) -> SampledGaussian:
    """Each bank trains with its own sampling rate, so their epsilons differ."""
    return SampledGaussian(noise_multiplier=1.0, sample_rate=0.01 * (1 + PARTIES.index(party)), steps=50)


@dataclass(frozen=True)
class Scenario:
    ledgers: tuple[Path, ...]
    server: Path
    events: dict[str, list[SampledGaussian]]
    budget: float


def build_scenario(directory: Path) -> Scenario:
    """Three banks, four rounds. bank-c's example-level budget stops it before round-3;
    the server records round-3 without bank-c's masked input."""
    budget = compute_epsilon([training("bank-c")] * 3, delta=DELTA) * 1.01
    policy = {
        PrivacyUnit.EXAMPLE: UnitBudget(max_epsilon=budget, delta=DELTA),
        PrivacyUnit.PARTICIPANT: UnitBudget(max_epsilon=50.0, delta=DELTA),
    }
    paths = []
    spent: dict[str, list[SampledGaussian]] = {}
    contributors: dict[str, list[str]] = {round_id: [] for round_id in ROUNDS}
    for party in PARTIES:
        path = directory / f"{party}.jsonl"
        paths.append(path)
        spent[party] = []
        with PrivacyLedger.open(path, party_id=party, signing_key=party_key(party), clock=fixed_clock()) as ledger:
            guard = BudgetGuard(BudgetPolicy(policy, party_id=party), ledger)
            for round_id in ROUNDS:
                try:
                    guard.charge_round(
                        round_id=round_id,
                        contributions={PrivacyUnit.EXAMPLE: training(party), PrivacyUnit.PARTICIPANT: NOISE},
                    )
                except BudgetExceeded:
                    continue
                spent[party].append(training(party))
                contributors[round_id].append(party)
    server = directory / "server.jsonl"
    with ServerLedger.open(server, server_id="aggregator", signing_key=party_key("server"), clock=fixed_clock()) as ledger:
        for round_id in ROUNDS:
            alive = tuple(contributors[round_id])
            ledger.append(
                ServerRoundRecord(
                    round_id=round_id,
                    cohort=PARTIES,
                    threshold=2,
                    mode=ProtocolMode.ACTIVE,
                    dim=1000,
                    bits=32,
                    privacy=(RoundPrivacy(PrivacyUnit.PARTICIPANT, NOISE),),
                    survivors={
                        RoundStage.ADVERTISE_KEYS: PARTIES,
                        RoundStage.SHARE_KEYS: PARTIES,
                        RoundStage.MASKED_INPUT_COLLECTION: alive,
                        RoundStage.CONSISTENCY_CHECK: alive,
                        RoundStage.UNMASKING: alive,
                    },
                    outcome=RoundOutcome.COMPLETED,
                )
            )
    return Scenario(ledgers=tuple(paths), server=server, events=spent, budget=budget)


class ReportParser(HTMLParser):
    """Collects what the tests look at; html.parser is lenient, so also counts open/close tags."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.verdict: str = ""
        self.order: list[str] = []
        self.scripts = 0
        self._in_verdict = False
        self.depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        self.order.append(tag)
        if tag == "img":
            self.images.append(attributes.get("src") or "")
        elif tag == "script":
            self.scripts += 1
        elif tag == "p" and attributes.get("id") == "verdict":
            self._in_verdict = True
        if tag not in ("img", "meta"):
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "p":
            self._in_verdict = False
        if tag not in ("img", "meta"):
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self._in_verdict:
            self.verdict += data


def parse(document: str) -> ReportParser:
    parser = ReportParser()
    parser.feed(document)
    parser.close()
    return parser


def fixed_report_clock() -> datetime:
    return datetime(2026, 3, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    return build_scenario(tmp_path_factory.mktemp("audit"))


@pytest.fixture(scope="module")
def html_document(report) -> str:
    return render_html(report)


@pytest.fixture(scope="module")
def report(scenario: Scenario):
    audit = run_audit(
        scenario.ledgers,
        keys_by_party={party: party_key(party).public_bytes for party in PARTIES},
        server_ledger=scenario.server,
        server_public_key=party_key("server").public_bytes,
    )
    return build_report(audit, clock=fixed_report_clock)


def test_html_report_parses_and_opens_with_the_verdict(report, html_document: str, scenario: Scenario) -> None:
    parsed = parse(html_document)
    assert parsed.depth == 0
    assert parsed.order.index("p") < parsed.order.index("h2")  # the verdict precedes every section
    top = max(PARTIES, key=lambda party: compute_epsilon(scenario.events[party], delta=DELTA))
    top_epsilon = compute_epsilon(scenario.events[top], delta=DELTA)
    assert parsed.verdict.startswith("3 ledgers verify and agree with the server's signed round records")
    assert f"highest example-level epsilon {top_epsilon:.3g} at delta 1e-5 ({top}), budget {scenario.budget:g}" in parsed.verdict
    assert "highest participant-level epsilon" in parsed.verdict
    assert report.ok


def test_html_report_embeds_decodable_png_figures_and_no_scripts(html_document: str) -> None:
    parsed = parse(html_document)
    assert len(parsed.images) == 3  # example, participant, survivors per round
    for source in parsed.images:
        prefix = "data:image/png;base64,"
        assert source.startswith(prefix)
        png = base64.b64decode(source[len(prefix) :], validate=True)
        assert png.startswith(PNG_SIGNATURE) and png[12:16] == b"IHDR"
    assert parsed.scripts == 0
    assert "Content-Security-Policy" in html_document


def test_report_shows_the_refused_round_and_the_servers_survivors(report) -> None:
    summary = {(s.party, s.unit): s for s in report.summaries}
    assert summary[("bank-c", PrivacyUnit.EXAMPLE)].refusals == 1
    assert summary[("bank-a", PrivacyUnit.EXAMPLE)].refusals == 0
    last_round = report.rounds[-1]
    assert last_round.round_id == "round-3"
    assert last_round.survivors[RoundStage.MASKED_INPUT_COLLECTION.value] == 2
    assert last_round.cohort_size == 3


def test_failed_verification_comes_first_in_the_verdict(scenario: Scenario, tmp_path: Path) -> None:
    tampered = tmp_path / "bank-b.jsonl"
    lines = scenario.ledgers[1].read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b'"round":"round-1"', b'"round":"round-9"')
    tampered.write_bytes(b"".join(lines))
    (tmp_path / "bank-b.jsonl.head").write_bytes(Path(f"{scenario.ledgers[1]}.head").read_bytes())
    audit = run_audit([scenario.ledgers[0], tampered, scenario.ledgers[2]], server_ledger=scenario.server)
    report = build_report(audit, clock=fixed_report_clock)
    verdict = parse(render_html(report)).verdict
    assert not report.ok
    assert verdict.startswith("VERIFICATION FAILED: 1 of 3 ledgers fail (bank-b: hash-mismatch at entry 2)")
    assert verdict.endswith(
        "; 3 ledgers checked only against the keys they declare (no --public-key)"
        "; the server ledger checked only against the key it declares (no --server-public-key)."
    )


def test_ledger_text_is_escaped_in_html_and_neutralised_in_csv(tmp_path: Path) -> None:
    hostile = '<script>alert("x")</script>$\\frac{1}{0}$'
    formula = '=HYPERLINK("http://evil")'
    path = tmp_path / "hostile.jsonl"
    with PrivacyLedger.open(path, party_id=hostile, signing_key=party_key("hostile"), clock=fixed_clock()) as ledger:
        ledger.record_spend(
            round_id=formula, unit=PrivacyUnit.EXAMPLE, event=training("bank-a"), delta=DELTA, budget_epsilon=10.0
        )
        ledger.record_spend(
            round_id="<b>r1</b>", unit=PrivacyUnit.EXAMPLE, event=training("bank-a"), delta=DELTA, budget_epsilon=10.0
        )
    report = build_report(run_audit([path]), clock=fixed_report_clock)
    document = render_html(report)
    parsed = parse(document)
    assert parsed.scripts == 0
    assert "<script>" not in document and "<b>r1</b>" not in document
    assert "&lt;script&gt;" in document
    assert len(parsed.images) == 1
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    rounds = [row["round"] for row in rows if row["record"] == "entry"]
    assert rounds == ["'" + formula, "<b>r1</b>"]


def test_json_and_csv_exports_carry_the_same_numbers(report) -> None:
    exported = json.loads(render_json(report))
    rows = list(csv.DictReader(io.StringIO(render_csv(report))))
    assert exported["verdict"] == next(row["detail"] for row in rows if row["record"] == "verdict")
    json_entries = [
        (e["party"], e["index"], e["epsilon_cumulative"], e["epsilon_increment"], e["budget_epsilon"])
        for e in exported["entries"]
    ]
    csv_entries = [
        (
            row["party"],
            int(row["index"]),
            float(row["epsilon_cumulative"]),
            float(row["epsilon_increment"]),
            float(row["budget_epsilon"]),
        )
        for row in rows
        if row["record"] == "entry"
    ]
    assert csv_entries == json_entries
    assert len(json_entries) == len(report.entries) > 0
    json_summaries = [(s["party"], s["unit"], s["epsilon"]) for s in exported["summaries"]]
    csv_summaries = [(row["party"], row["unit"], float(row["epsilon_cumulative"])) for row in rows if row["record"] == "summary"]
    assert csv_summaries == json_summaries
    json_rounds = [(r["round"], r["cohort_size"], r["survivors"]) for r in exported["rounds"]]
    csv_rounds = [
        (row["round"], int(row["cohort_size"]), {stage.value: int(row[stage.value]) for stage in RoundStage})
        for row in rows
        if row["record"] == "round"
    ]
    assert csv_rounds == json_rounds
    assert exported["ok"] is True and all(ledger["key_pinned"] for ledger in exported["ledgers"])


def test_report_epsilons_are_recomputed_not_copied_from_the_ledger(report, scenario: Scenario) -> None:
    for summary in report.summaries:
        if summary.unit is PrivacyUnit.EXAMPLE:
            assert summary.epsilon == pytest.approx(compute_epsilon(scenario.events[summary.party], delta=DELTA), rel=1e-12)


def test_rows_of_a_reordered_ledger_carry_the_findings_of_their_positions(scenario: Scenario, tmp_path: Path) -> None:
    reordered = tmp_path / "bank-a.jsonl"
    lines = scenario.ledgers[0].read_bytes().splitlines(keepends=True)
    lines[1], lines[4] = lines[4], lines[1]
    reordered.write_bytes(b"".join(lines))
    report = build_report(run_audit([reordered]), clock=fixed_report_clock)
    rows = {row.index: row for row in report.entries}
    assert [row.index for row in report.entries] == list(range(len(lines)))
    assert "index-out-of-sequence" in rows[1].findings and "index-out-of-sequence" in rows[4].findings
    assert "index-out-of-sequence" not in rows[0].findings
    assert rows[1].round_id == "round-2"


# --------------------------------------------------------------------------- hostile ledger text

HOSTILE = "\"><img src=x onerror=alert(1)><script>alert(2)</script>'<a href=javascript:x>$\\frac{1}{0}$"
HOSTILE_FILE_NAME = "\"><img src=x onerror=alert(3)>'<b>"
ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "h1", "h2", "p", "code", "em", "strong", "div",
    "table", "thead", "tbody", "tr", "th", "td", "span", "abbr", "figure", "img", "figcaption",
}  # fmt: skip


class SkeletonParser(HTMLParser):
    """Every element with its attribute names, in document order, and every attribute."""

    def __init__(self) -> None:
        super().__init__()
        self.skeleton: list[tuple[str, tuple[str, ...]]] = []
        self.attributes: list[tuple[str, str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.skeleton.append((tag, tuple(sorted(name for name, _ in attrs))))
        self.attributes.extend((tag, name, value or "") for name, value in attrs)


def skeleton_of(document: str) -> SkeletonParser:
    parser = SkeletonParser()
    parser.feed(document)
    parser.close()
    return parser


def world_with_text(directory: Path, text: str, file_text: str) -> Path:
    """One party ``text`` and one party without a ledger, both in a server cohort; rounds
    named after ``text``: a statistics round (no DP), an aborted round whose abort reason
    is ``text``, and a training round that ``text`` contributed to but does not charge.
    The party's ledger file is named ``file_text`` and has lost its signed head."""
    directory.mkdir()
    party, absent = text, text + "-absent"
    ledger_path = directory / f"{file_text}.jsonl"
    with PrivacyLedger.open(ledger_path, party_id=party, signing_key=party_key("hostile"), clock=fixed_clock()) as ledger:
        ledger.record_spend(
            round_id=f"{text}-0", unit=PrivacyUnit.EXAMPLE, event=training("bank-a"), delta=DELTA, budget_epsilon=10.0
        )
    Path(f"{ledger_path}.head").unlink()
    cohort = (party, absent)
    everyone = dict.fromkeys(RoundStage, cohort)
    server_path = directory / "server.jsonl"
    with ServerLedger.open(server_path, server_id=text, signing_key=party_key("server"), clock=fixed_clock()) as ledger:
        ledger.append(
            ServerRoundRecord(
                round_id=f"{text}-stats",
                cohort=cohort,
                threshold=2,
                mode=ProtocolMode.ACTIVE,
                dim=8,
                bits=64,
                privacy=(),
                survivors=everyone,
                outcome=RoundOutcome.COMPLETED,
            )
        )
        ledger.append(
            ServerRoundRecord(
                round_id=f"{text}-aborted",
                cohort=cohort,
                threshold=2,
                mode=ProtocolMode.ACTIVE,
                dim=8,
                bits=32,
                privacy=(),
                survivors={RoundStage.ADVERTISE_KEYS: cohort},
                outcome=RoundOutcome.ABORTED,
                abort_reason=text,
            )
        )
        ledger.append(
            ServerRoundRecord(
                round_id=f"{text}-1",
                cohort=cohort,
                threshold=2,
                mode=ProtocolMode.ACTIVE,
                dim=8,
                bits=32,
                privacy=(RoundPrivacy(PrivacyUnit.PARTICIPANT, NOISE),),
                survivors=everyone,
                outcome=RoundOutcome.COMPLETED,
            )
        )
    return directory


def report_of_world(directory: Path) -> AuditReport:
    ledgers = [path for path in directory.glob("*.jsonl") if path.name != "server.jsonl"]
    return build_report(run_audit(ledgers, server_ledger=directory / "server.jsonl"), clock=fixed_report_clock)


def test_hostile_ledger_text_never_appears_unescaped_in_the_html(tmp_path: Path) -> None:
    report = report_of_world(world_with_text(tmp_path / "hostile", HOSTILE, HOSTILE_FILE_NAME))
    document = render_html(report)
    # the text reached every part of the report: ids, file name, findings, notes, rounds
    assert not report.ok and report.audit.cross_findings and report.notes and len(report.rounds) == 3
    assert any(HOSTILE_FILE_NAME in finding.detail for finding in report.audit.ledgers[0].findings)
    for raw in (HOSTILE, HOSTILE_FILE_NAME, "<script", "<img src=x", '"><img', "<a href", "<b>"):
        assert raw not in document
    assert document.count("&lt;script&gt;alert(2)&lt;/script&gt;") >= 10
    assert "&#34;&gt;&lt;img src=x onerror=alert(3)&gt;&#39;&lt;b&gt;" in document
    parsed = skeleton_of(document)
    assert {tag for tag, _ in parsed.skeleton} <= ALLOWED_TAGS
    assert not [name for _, name, _ in parsed.attributes if name.startswith("on") or name in ("href", "style", "action")]
    assert all(value.startswith("data:image/png;base64,") for tag, name, value in parsed.attributes if name == "src")


def test_no_element_or_attribute_of_the_html_comes_from_ledger_text(tmp_path: Path) -> None:
    """The same world with markup in every id, and with letters of the same lengths:
    the parsed documents have the same elements with the same attributes, so the ledger
    text produced none of them, and every attribute value it reached is the escaped text."""
    hostile = render_html(report_of_world(world_with_text(tmp_path / "hostile", HOSTILE, HOSTILE_FILE_NAME)))
    plain = render_html(report_of_world(world_with_text(tmp_path / "plain", "x" * len(HOSTILE), "y" * len(HOSTILE_FILE_NAME))))
    hostile_parsed, plain_parsed = skeleton_of(hostile), skeleton_of(plain)
    assert hostile_parsed.skeleton == plain_parsed.skeleton
    titles = [value for tag, name, value in hostile_parsed.attributes if name == "title"]
    assert any(value.startswith(HOSTILE) for value in titles)  # a shortened round id, intact in its title
    assert any(HOSTILE_FILE_NAME in value for value in titles)  # the file's full path


def test_the_environment_autoescapes_every_template_and_marks_nothing_safe() -> None:
    import jinja2
    from jinja2 import nodes

    from dp.audit.report.html_page import environment

    env = environment()
    assert env.undefined is jinja2.StrictUndefined
    names = env.list_templates()
    assert "report.html.j2" in names
    for name in names:
        assert env.select_autoescape(name) if callable(env.autoescape) else env.autoescape is True
        source = env.loader.get_source(env, name)[0]
        tree = env.parse(source)
        assert [node.name for node in tree.find_all(nodes.Filter) if node.name in ("safe", "forceescape")] == []
        assert not list(tree.find_all(nodes.EvalContextModifier))  # no {% autoescape false %}
    with pytest.raises(jinja2.UndefinedError):
        env.from_string("{{ missing }}").render()
    assert env.from_string("{{ text }}").render(text='<i a="1">\'') == "&lt;i a=&#34;1&#34;&gt;&#39;"


def test_templates_are_package_data() -> None:
    import tomllib
    from fnmatch import fnmatch
    from importlib.resources import files

    templates = files("dp.audit.report").joinpath("templates")
    shipped = sorted(entry.name for entry in templates.iterdir() if entry.is_file())
    assert "report.html.j2" in shipped and "report.css" in shipped
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["package-data"]["dp.audit.report"]
    assert all(any(fnmatch(f"templates/{name}", pattern) for pattern in patterns) for name in shipped)


@pytest.mark.parametrize(
    ("uri", "accepted"),
    [
        ("data:image/png;base64,iVBORw0KGgo=", True),
        ("javascript:alert(1)", False),
        ('data:image/png;base64,AAAA" onerror="alert(1)', False),
        ("data:image/svg+xml;base64,PHN2Zz4=", False),
        ("data:image/png;base64,AAAA\n", False),
    ],
)
def test_only_base64_png_data_uris_reach_an_img_src(uri: str, accepted: bool) -> None:
    from dp.audit.report.figures import is_png_data_uri

    assert is_png_data_uri(uri) is accepted


def test_legend_text_from_a_ledger_is_never_mathtext_and_never_hidden() -> None:
    from matplotlib.cbook import is_math_text

    from dp.audit.report.figures import plot_text

    for text in ("$x$", "$\\frac{1}{0}$ and $y$", "\\$a$", "price $5 and $6"):
        assert not is_math_text(plot_text(text))
    assert plot_text("_bank").startswith(" ")  # matplotlib leaves labels starting with "_" out of legends
    assert plot_text("a" * 100, 40) == "a" * 39 + "…"


# --------------------------------------------------------------------------- a realistic consortium


@pytest.fixture(scope="module")
def consortium(tmp_path_factory: pytest.TempPathFactory):
    from tests.dp.audit_scenarios import build_consortium

    return build_consortium(tmp_path_factory.mktemp("consortium"))


@pytest.fixture(scope="module")
def consortium_report(consortium) -> AuditReport:
    from tests.dp.audit_scenarios import BANKS, bank_key, server_key

    audit = run_audit(
        consortium.ledgers,
        keys_by_party={bank: bank_key(bank).public_bytes for bank in BANKS},
        server_ledger=consortium.server,
        server_public_key=server_key().public_bytes,
    )
    return build_report(audit, clock=fixed_report_clock)


def test_rounds_are_numbered_one_to_r_in_the_servers_order(consortium, consortium_report: AuditReport) -> None:
    from dp.audit.report.figures import epsilon_series

    ids = (consortium.statistics_round, *consortium.training_rounds)
    assert [(row.number, row.round_id) for row in consortium_report.rounds] == list(enumerate(ids, start=1))
    assert consortium_report.round_order == ids
    assert all(consortium_report.round_order[row.round_number - 1] == row.round_id for row in consortium_report.entries)
    for unit in PrivacyUnit:
        xs = {number for line in epsilon_series(consortium_report, unit) for number, _ in (*line.spends, *line.refusals)}
        assert xs == set(range(2, len(ids) + 1))  # the statistics round is #1 and nobody spends in it
    exported = json.loads(render_json(consortium_report))
    assert [row["number"] for row in exported["rounds"]] == list(range(1, len(ids) + 1))
    csv_rows = [row for row in csv.DictReader(io.StringIO(render_csv(consortium_report))) if row["record"] == "round"]
    assert [int(row["round_number"]) for row in csv_rows] == list(range(1, len(ids) + 1))


def test_banks_with_equal_epsilons_share_one_labelled_line(consortium_report: AuditReport) -> None:
    from dp.audit.report.figures import epsilon_series

    example = epsilon_series(consortium_report, PrivacyUnit.EXAMPLE)
    assert [line.parties for line in example] == [("bank-a", "bank-b", "bank-c"), ("bank-d",), ("bank-e",)]
    assert [len(line.spends) for line in example] == [10, 9, 8]
    assert [len(line.refusals) for line in example] == [0, 0, 2]
    # bank-d and bank-e equal the others until bank-d drops out (round #5) and bank-e's budget stops it
    assert example[1].spends[:3] == example[0].spends[:3] and example[2].spends == example[0].spends[:8]
    participant = epsilon_series(consortium_report, PrivacyUnit.PARTICIPANT)
    assert [line.parties for line in participant] == [("bank-a", "bank-b", "bank-c"), ("bank-d",), ("bank-e",)]


def test_a_round_without_dp_is_reported_as_an_exact_release(consortium, consortium_report: AuditReport) -> None:
    statistics = consortium.statistics_round
    assert [row.round_id for row in consortium_report.exact_releases] == [statistics]
    assert all(row.differentially_private for row in consortium_report.rounds[1:])
    assert consortium_report.verdict.endswith(
        f"; 1 round (#1 {statistics}) declared no differential privacy: its sum was released exactly, without noise, "
        "and no epsilon here covers it."
    )
    document = render_html(consortium_report)
    assert parse(document).verdict == consortium_report.verdict
    rows = RowParser.rows_of(document)
    flagged = [row for row in rows if row.css_class == "exact"]
    assert len(flagged) == 1 and flagged[0].cells[0] == "1" and "exact release, no DP" in flagged[0].cells[-1]
    assert 'id="exact-releases"' in document
    exported = json.loads(render_json(consortium_report))["rounds"]
    assert [(row["differentially_private"], row["exact_release"]) for row in exported[:2]] == [(False, True), (True, False)]
    first_round = next(row for row in csv.DictReader(io.StringIO(render_csv(consortium_report))) if row["record"] == "round")
    assert first_round["detail"] == "no differential privacy: the sum was released exactly"


def test_an_aborted_round_without_dp_is_not_an_exact_release(tmp_path: Path) -> None:
    report = report_of_world(world_with_text(tmp_path / "world", "bank", "bank"))
    by_id = {row.round_id: row for row in report.rounds}
    assert by_id["bank-stats"].exact_release and not by_id["bank-aborted"].exact_release
    assert not by_id["bank-aborted"].differentially_private and by_id["bank-1"].differentially_private
    assert "1 round (#1 bank-stats) declared no differential privacy" in report.verdict
    assert "; 1 disagreement with the server's records (bank, round bank-1: spend-missing-for-round);" in report.verdict
    assert "no DP declared" in render_html(report)


def test_long_ids_are_shortened_with_the_full_value_in_the_title(consortium_report: AuditReport) -> None:
    document = render_html(consortium_report)
    shortened = ShortenedParser.of(document)
    round_ids = set(consortium_report.round_order)
    keys = {ledger.public_key for ledger in consortium_report.audit.ledgers}
    assert {title for title, _ in shortened} == round_ids | keys | {consortium_report.audit.server.public_key}
    assert all(text.endswith("…") and title.startswith(text[:-1]) and len(text) < len(title) for title, text in shortened)
    assert all(f">{round_id}<" not in document for round_id in round_ids)  # never a 32-digit id in a cell


def test_the_realistic_report_renders_with_every_section(consortium_report: AuditReport) -> None:
    parsed = parse(render_html(consortium_report))
    assert len(parsed.images) == 3 and parsed.depth == 0 and parsed.scripts == 0
    assert consortium_report.ok


@dataclass
class Row:
    css_class: str
    cells: list[str]


class RowParser(HTMLParser):
    """Table rows of the body as their class and cell texts."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[Row] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append(Row(css_class=dict(attrs).get("class") or "", cells=[]))
        elif tag == "td":
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            self.rows[-1].cells.append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    @classmethod
    def rows_of(cls, document: str) -> list[Row]:
        parser = cls()
        parser.feed(document)
        parser.close()
        return parser.rows


class ShortenedParser(HTMLParser):
    """(title, text) of every shortened value."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self._title: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "span" and attributes.get("class") == "shortened":
            self._title = attributes.get("title") or ""

    def handle_data(self, data: str) -> None:
        if self._title is not None:
            self.found.append((self._title, data))
            self._title = None

    @classmethod
    def of(cls, document: str) -> list[tuple[str, str]]:
        parser = cls()
        parser.feed(document)
        parser.close()
        return parser.found
