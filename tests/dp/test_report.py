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
from dp.audit.report import build_report, render_csv, render_html, render_json, run_audit
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
