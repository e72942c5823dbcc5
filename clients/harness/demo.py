"""``secagg demo``: five banks train a credit-default model together through the real server.

What runs (everything on loopback, in a fresh ``runs/<UTC timestamp>/``):

1. The Lending Club data (:mod:`clients.training.datasets`, SHA-256 verified) is split into a
   stratified hold-out test set and five non-IID banks by US census region; each bank's
   loans are written to that bank's own directory as a CSV, the only data its process
   ever reads.
2. The server: ``python -m service --dev`` as a subprocess (uvicorn, SQLite and the
   signed round ledger under ``server/data``), :class:`clients.harness.local_server.LocalServer`.
3. One operating-system process per bank (``python -m clients.harness.bank_process JOB.json``):
   each generates its own Ed25519 identity key in its directory (the private key never
   leaves it) and announces the public key; the demo, acting as the consortium's
   administrator, enrols it. Each bank then runs :func:`clients.training.federated.run_bank`,
   the same code as ``secagg train``: secure statistics round for standardisation, then
   ``rounds`` rounds of DP-SGD, masking and secure aggregation over HTTP, each bank with
   its own signed privacy ledger and budget.
4. In round ``rounds // 2 + 1`` one bank (``bank-c`` with five banks) stops answering
   after sharing its keys (before its masked input, R2): the stage closes at its short
   deadline, the other banks reveal the shares of its masking key, and the round
   completes without it (Bonawitz et al. 2017, section 4). The bank fetches the public
   result and continues with the next round.
5. After each round the demo, as the consortium's evaluator, checks every bank holds the
   same global model (SHA-256) and evaluates it on the public hold-out set; a live table
   shows round, survivors, test AUC and accuracy, epsilon spent per bank, wall time.
6. Baselines for comparison, computed by the demo on the pooled training rows (which
   the consortium could not do without pooling): centralized non-private training of
   the same model (full-batch Adam to convergence, L2 penalty 1e-3), centralized DP-SGD
   and each bank alone with DP-SGD, both with the plan's DP parameters and the same
   number of epochs as the federated run, at the same target epsilon.
7. ``summary.json`` (AUCs, epsilon per bank, delta, dropouts, the per-round table) and
   ``audit.html`` (:mod:`dp.audit.report`: every bank's ledger verified and recomputed, the
   server's signed round records and the cross-check between them).

Privacy: example level, epsilon ``target_epsilon`` (default 3) at ``delta`` (1e-5) per
bank over the whole run (see :mod:`clients.training.federated`); with ``--participant-epsilon``
also participant level, Skellam noise in the ring. The evaluation uses only the public
hold-out set.

The DP noise is fresh in every run, and the hold-out set holds only about a hundred
defaults, so AUCs differ by a few hundredths between runs; the README quotes measured
figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from clients.training.datasets import BANK_REGIONS, POSITIVE, TARGET, lending_club_schema, load_lending_club, split_banks
from clients.training.federated import LEDGER_FILE, MODEL_FILE, PROGRESS_FILE, BankJob, ProgressLog
from clients.training.metrics import accuracy, roc_auc
from clients.training.plan import FederatedError, FederatedPlan, predict_logits, statistics_dim
from clients.training.tabular import Preprocessor, TabularSchema
from dp.models import ModelKind, ModelSpec
from secagg.config import ProtocolMode, minimum_threshold
from secagg.rounds import Round

MIN_BANKS = 3
"""Below three banks, the sum of two reveals the other's update to each (clients.runtime.policy.DEFAULT_MIN_COHORT_SIZE)."""
READY_TIMEOUT_SECONDS = 180.0
ROUND_TIMEOUT_SECONDS = 300.0
DROPOUT_STAGE_DEADLINE_SECONDS = 6.0
"""How long the stage where the bank drops out stays open: the honest banks answer within a second on loopback."""
NORMAL_DEADLINES: dict[str, float] = {item.key: 300.0 if item is Round.ADVERTISE_KEYS else 120.0 for item in Round}
CENTRALIZED_ITERATIONS = 300
CENTRALIZED_LEARNING_RATE = 0.01
CENTRALIZED_L2 = 1e-3


class DemoError(FederatedError):
    """The demo could not complete (a bank process failed, the server refused, a timeout)."""


@dataclass(frozen=True)
class DemoConfig:
    banks: int = 5
    rounds: int = 10
    mode: ProtocolMode = ProtocolMode.ACTIVE
    dropout: bool = True
    runs_dir: Path = Path("runs")
    target_epsilon: float = 3.0
    delta: float = 1e-5
    local_epochs: int = 1
    learning_rate: float = 1.0
    model: ModelKind = ModelKind.LOGISTIC_REGRESSION
    update_clip: float = 10.0
    participant_epsilon: float | None = None

    def __post_init__(self) -> None:
        if not MIN_BANKS <= self.banks <= len(BANK_REGIONS):
            raise DemoError(f"the demo runs {MIN_BANKS} to {len(BANK_REGIONS)} banks, got {self.banks}")
        if self.rounds < 1:
            raise DemoError("the demo needs at least one round")
        threshold = minimum_threshold(ProtocolMode(self.mode), self.banks)
        if self.dropout and self.banks - 1 < threshold:
            raise DemoError(
                f"with {self.banks} banks in {ProtocolMode(self.mode).value} mode the threshold is {threshold}, so a dropout "
                "would abort the round: use more banks, --mode honest-but-curious or --no-dropout"
            )

    @property
    def dropout_bank(self) -> int:
        return min(2, self.banks - 1)

    @property
    def dropout_round(self) -> int:
        """0-based index of the training round with the dropout."""
        return self.rounds // 2


# --------------------------------------------------------------------------- model evaluation (numpy)


def evaluate(spec: ModelSpec, parameters: np.ndarray, features: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    logits = predict_logits(spec, parameters, features)
    probabilities = 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))
    return roc_auc(labels, logits), accuracy(labels, probabilities)


# --------------------------------------------------------------------------- baselines (torch)


def train_centralized(spec: ModelSpec, start: np.ndarray, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Non-private reference: full-batch Adam on the pooled rows, L2 penalty (see the module docstring)."""
    from dp.training import train_non_private

    return train_non_private(
        spec,
        start,
        features,
        labels,
        iterations=CENTRALIZED_ITERATIONS,
        learning_rate=CENTRALIZED_LEARNING_RATE,
        l2_penalty=CENTRALIZED_L2,
    )


def train_dp_alone(
    plan: FederatedPlan, spec: ModelSpec, start: np.ndarray, features: np.ndarray, labels: np.ndarray, accountant: Path
) -> np.ndarray:
    """DP-SGD on one party's rows with the plan's parameters, all epochs of the run in one go, same target epsilon."""
    from dp.training import BankTrainer, DPSGDConfig, EpsilonTarget

    config = DPSGDConfig(
        max_grad_norm=plan.max_grad_norm,
        sample_rate=plan.sample_rate,
        local_steps=plan.local_steps * plan.rounds,
        learning_rate=plan.learning_rate,
        noise=EpsilonTarget(plan.target_epsilon, 1),
        delta=plan.delta,
    )
    update = BankTrainer(spec, config, accountant_path=accountant).train_round(start, features, labels)
    return start + update.model_update


# --------------------------------------------------------------------------- the run


def _fresh_run_dir(runs_dir: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for suffix in [""] + [f"-{index}" for index in range(1, 100)]:
        candidate = runs_dir / f"{stamp}{suffix}"
        try:
            candidate.mkdir(parents=True)
            return candidate
        except FileExistsError:
            continue
    raise DemoError(f"cannot create a fresh run directory under {runs_dir}")


class _Banks:
    """The bank processes and their progress logs."""

    def __init__(self, ids: list[str], directories: dict[str, Path]) -> None:
        self.ids = ids
        self.directories = directories
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, jobs: dict[str, Path]) -> None:
        for bank_id in self.ids:
            log = open(self.directories[bank_id] / "bank.log", "ab")  # noqa: SIM115 - owned by the subprocess until it exits
            self.processes[bank_id] = subprocess.Popen(
                [sys.executable, "-m", "clients.harness.bank_process", str(jobs[bank_id])],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
            log.close()

    def events(self, bank_id: str) -> list[dict[str, Any]]:
        return ProgressLog.read(self.directories[bank_id] / PROGRESS_FILE)

    def check_alive(self) -> None:
        for bank_id in self.ids:
            failed = [event for event in self.events(bank_id) if event["event"] == "failed"]
            if failed:
                raise DemoError(f"{bank_id} failed: {failed[-1]['error']} (see {self.directories[bank_id] / 'bank.log'})")
            process = self.processes.get(bank_id)
            finished = any(event["event"] == "finished" for event in self.events(bank_id))
            if (process is not None and process.poll() not in (None, 0)) or (
                process is not None and process.poll() == 0 and not finished
            ):
                raise DemoError(f"{bank_id} exited with code {process.returncode} (see {self.directories[bank_id] / 'bank.log'})")

    def wait_for(self, predicate, *, what: str, timeout: float) -> dict[str, dict[str, Any]]:
        """Wait until every bank has an event matching ``predicate``; return it per bank."""
        deadline = time.monotonic() + timeout
        while True:
            found = {}
            for bank_id in self.ids:
                matching = [event for event in self.events(bank_id) if predicate(event)]
                if matching:
                    found[bank_id] = matching[-1]
            if len(found) == len(self.ids):
                return found
            self.check_alive()
            if time.monotonic() > deadline:
                raise DemoError(f"timed out waiting for {what} from {sorted(set(self.ids) - set(found))}")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def _wait_round_finished(admin: Any, round_id: str, timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = admin.round_status(round_id)
        if status.get("outcome") is not None:
            return status
        time.sleep(0.2)
    raise DemoError(f"round {round_id} did not finish within {timeout:g} s")


def _wait_ledger(path: Path, entries: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text(encoding="utf-8").splitlines()) >= entries:
            return
        time.sleep(0.2)
    raise DemoError(f"the server ledger {path} did not reach {entries} entries within {timeout:g} s")


def _round_table(rows: list[dict[str, Any]], bank_ids: list[str], title: str):
    from rich import box
    from rich.table import Table

    table = Table(
        title=title,
        box=box.SIMPLE_HEAD,
        caption="surv.: banks in the sum (↓ dropped out mid-round); AUC, acc.: global model on the hold-out set; "
        "ε: example-level epsilon spent per bank; s: round wall time",
    )
    for header in ("round", "surv.", "AUC", "acc.", *[f"ε {bank.removeprefix('bank-')}" for bank in bank_ids], "s"):
        table.add_column(header, justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            str(row["round"]),
            f"{row['survivors']}/{len(bank_ids)}"
            + (" ↓" + ",".join(bank.removeprefix("bank-") for bank in row["dropouts"]) if row["dropouts"] else ""),
            f"{row['auc']:.4f}",
            f"{row['accuracy']:.4f}",
            *[f"{row['epsilon'][bank]:.2f}" for bank in bank_ids],
            f"{row['seconds']:.1f}",
        )
    return table


def run_demo(config: DemoConfig, *, console: Any = None) -> dict[str, Any]:
    """Run the whole demo; returns the summary (also written to ``summary.json``)."""
    from rich.console import Console
    from rich.live import Live

    from clients.harness.local_server import AdminClient, LocalServer

    console = console or Console()
    wall_started = time.monotonic()
    run_dir = _fresh_run_dir(Path(config.runs_dir))
    console.print(f"[bold]secagg demo[/bold]: {config.banks} banks, {config.rounds} rounds, run directory {run_dir}")

    table = load_lending_club()
    split = split_banks(table, banks=config.banks)
    schema = lending_club_schema()
    plan = FederatedPlan(
        rounds=config.rounds,
        model=config.model,
        target_epsilon=config.target_epsilon,
        delta=config.delta,
        local_epochs=config.local_epochs,
        learning_rate=config.learning_rate,
        mode=config.mode,
        update_clip=config.update_clip,
        participant_epsilon=config.participant_epsilon,
    )
    consortium = run_dir / "consortium"
    consortium.mkdir()
    plan.save(consortium / "plan.json")
    schema.save(consortium / "schema.json")
    bank_ids = list(split.banks)
    directories = {bank_id: run_dir / "banks" / bank_id for bank_id in bank_ids}
    jobs: dict[str, Path] = {}
    for index, bank_id in enumerate(bank_ids):
        directories[bank_id].mkdir(parents=True)
        (directories[bank_id] / "loans.csv").write_bytes(split.banks[bank_id].to_csv_bytes())
        dropout = (
            {"round_index": config.dropout_round, "protocol_round": Round.MASKED_INPUT_COLLECTION.key}
            if config.dropout and index == config.dropout_bank
            else None
        )
        job = BankJob(
            participant_id=bank_id,
            data=directories[bank_id] / "loans.csv",
            target=TARGET,
            positive=POSITIVE,
            schema=consortium / "schema.json",
            plan=consortium / "plan.json",
            work_dir=directories[bank_id],
            key=directories[bank_id] / "identity.key",
        )
        jobs[bank_id] = directories[bank_id] / "job.json"
        jobs[bank_id].write_text(json.dumps({**job.to_dict(), "dropout": dropout}, indent=2), encoding="utf-8")

    banks = _Banks(bank_ids, directories)
    rows: list[dict[str, Any]] = []
    server_dir = run_dir / "server"
    threshold = minimum_threshold(plan.mode, len(bank_ids))
    with LocalServer(directory=server_dir) as server:
        for bank_id in bank_ids:
            job_value = json.loads(jobs[bank_id].read_text(encoding="utf-8"))
            job_value["server"] = server.base_url
            jobs[bank_id].write_text(json.dumps(job_value, indent=2), encoding="utf-8")
        console.print(f"server up at {server.base_url} (SQLite in {server.data_dir}); starting {len(bank_ids)} bank processes")
        banks.start(jobs)
        try:
            ready = banks.wait_for(lambda event: event["event"] == "ready", what="identity keys", timeout=READY_TIMEOUT_SECONDS)
            with AdminClient(server.base_url, server.admin_token) as admin:
                for bank_id in bank_ids:
                    admin.enroll(bank_id, bytes.fromhex(ready[bank_id]["public_key"]))
                base_round = {
                    "cohort": bank_ids,
                    "threshold": threshold,
                    "mode": plan.mode.value,
                    "graph": "full",
                    "degree": None,
                }
                total_rounds = 0
                if not schema.is_standardized:
                    created = admin.create_round(
                        {**base_round, "dim": statistics_dim(schema), "bits": 64, "deadlines": NORMAL_DEADLINES}
                    )
                    _wait_round_finished(admin, created["round_id"], ROUND_TIMEOUT_SECONDS)
                    banks.wait_for(lambda event: event["event"] == "statistics", what="statistics", timeout=ROUND_TIMEOUT_SECONDS)
                    total_rounds += 1
                    console.print("standardisation statistics computed by secure aggregation (sums only, no rows pooled)")
                standardized = TabularSchema.load(directories[bank_ids[0]] / "schema-standardized.json")
                preprocessor = Preprocessor(standardized)
                test = preprocessor.transform(split.test)
                spec = plan.model_spec(standardized.num_features)
                cohort = {"min_survivors": threshold, "max_clients": len(bank_ids)}
                privacy = {
                    "privacy": plan.round_privacy(spec.parameter_count, **cohort),
                    "notes": "secagg demo: example-level DP-SGD at every bank"
                    + ("; participant-level Skellam noise in the ring" if plan.participant_epsilon is not None else ""),
                }
                round_dim = plan.round_dim(spec.parameter_count, **cohort)
                with Live(_round_table(rows, bank_ids, "federated rounds"), console=console, refresh_per_second=4) as live:
                    for round_index in range(plan.rounds):
                        started = time.monotonic()
                        deadlines = dict(NORMAL_DEADLINES)
                        dropping = config.dropout and round_index == config.dropout_round
                        if dropping:
                            deadlines.update(
                                {
                                    item.key: DROPOUT_STAGE_DEADLINE_SECONDS
                                    for item in Round
                                    if item.number >= Round.MASKED_INPUT_COLLECTION.number
                                }
                            )
                        created = admin.create_round(
                            {**base_round, "dim": round_dim, "bits": plan.ring_bits, "dp_policy": privacy, "deadlines": deadlines}
                        )
                        round_id = created["round_id"]
                        status = _wait_round_finished(admin, round_id, ROUND_TIMEOUT_SECONDS)
                        if status["outcome"] != "completed":
                            raise DemoError(
                                f"round {round_index + 1} aborted: {status.get('abort_reason')} {status.get('abort_detail')}"
                            )
                        reports = banks.wait_for(
                            lambda event, rid=round_id: event["event"] == "round" and event["round_id"] == rid,
                            what=f"round {round_index + 1}", timeout=ROUND_TIMEOUT_SECONDS,
                        )  # fmt: skip
                        total_rounds += 1
                        digests = {report["model_sha256"] for report in reports.values()}
                        if len(digests) != 1:
                            raise DemoError(f"the banks disagree on the global model after round {round_index + 1}")
                        model = np.load(directories[bank_ids[0]] / MODEL_FILE, allow_pickle=False)
                        auc, acc = evaluate(spec, model, test.features, test.labels)
                        dropped = [bank for bank, report in reports.items() if not report["contributed"]]
                        rows.append(
                            {
                                "round": round_index + 1,
                                "round_id": round_id,
                                "survivors": next(iter(reports.values()))["survivors"],
                                "dropouts": dropped,
                                "auc": auc,
                                "accuracy": acc,
                                "epsilon": {bank: float(report["epsilon"]) for bank, report in reports.items()},
                                "seconds": time.monotonic() - started,
                            }
                        )
                        live.update(_round_table(rows, bank_ids, "federated rounds"))
                console.print()
                finals = banks.wait_for(
                    lambda event: event["event"] == "finished", what="final reports", timeout=ROUND_TIMEOUT_SECONDS
                )
                server_ledger = server.data_dir / "server-ledger.jsonl"
                _wait_ledger(server_ledger, total_rounds, timeout=60.0)
                history = {row["round_id"]: admin.round_status(row["round_id"]) for row in rows}
        finally:
            banks.stop()

    report_path = run_dir / "audit.html"
    audit_ok, verdict = _write_audit(run_dir, bank_ids, directories, ready, server_dir, report_path)
    console.print("computing the baselines (centralized, centralized DP, each bank alone with DP)")
    baselines = _baselines(plan, spec, preprocessor, split, test, run_dir)
    final_model = np.load(directories[bank_ids[0]] / MODEL_FILE, allow_pickle=False)
    auc_federated, accuracy_federated = evaluate(spec, final_model, test.features, test.labels)
    dropouts = [
        {"round": row["round"], "round_id": row["round_id"], "banks": row["dropouts"], "survivors": row["survivors"]}
        for row in rows
        if row["dropouts"]
    ]
    summary = {
        "rounds": plan.rounds,
        "banks": bank_ids,
        "auc_federated": auc_federated,
        "accuracy_federated": accuracy_federated,
        "auc_centralized": baselines["auc_centralized"],
        "auc_centralized_dp": baselines["auc_centralized_dp"],
        "auc_local_mean": float(np.mean(list(baselines["auc_local"].values()))),
        "auc_local": baselines["auc_local"],
        "epsilon_per_bank": {bank: float(finals[bank]["epsilon"]) for bank in bank_ids},
        "participant_epsilon_per_bank": {bank: finals[bank].get("participant_epsilon") for bank in bank_ids},
        "participant_delta": plan.participant_delta if plan.participant_epsilon is not None else None,
        "delta": plan.delta,
        "target_epsilon": plan.target_epsilon,
        "dropouts": len(dropouts),
        "dropout_rounds": dropouts,
        "server_outcomes": {round_id: status.get("outcome") for round_id, status in history.items()},
        "server_r2_responded": {round_id: _r2_responded(status) for round_id, status in history.items()},
        "threshold": threshold,
        "mode": plan.mode.value,
        "test_rows": test.rows,
        "train_rows": {bank: split.banks[bank].rows for bank in bank_ids},
        "features": spec.num_features,
        "model": plan.model.value,
        "plan": plan.to_dict(),
        "round_table": rows,
        "report": str(report_path),
        "audit_ok": audit_ok,
        "audit_verdict": verdict,
        "run_dir": str(run_dir),
        "wall_seconds": time.monotonic() - wall_started,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _print_comparison(console, summary)
    return summary


def _r2_responded(status: dict[str, Any]) -> list[int]:
    for record in status.get("history") or []:
        if record.get("stage") == "R2-masked-input-collection":
            return list(record.get("responded") or [])
    return []


def _write_audit(
    run_dir: Path,
    bank_ids: list[str],
    directories: dict[str, Path],
    ready: dict[str, dict[str, Any]],
    server_dir: Path,
    report_path: Path,
) -> tuple[bool, str]:
    from dp.audit.chain import load_public_key
    from dp.audit.report import build_report, render_html, run_audit

    data_dir = server_dir / "data"
    key_file = data_dir / "server-ledger.key.pub"
    if not key_file.exists():
        raise DemoError(f"the server's ledger public key {key_file} is missing")
    audit = run_audit(
        [directories[bank] / LEDGER_FILE for bank in bank_ids],
        keys_by_party={bank: bytes.fromhex(ready[bank]["public_key"]) for bank in bank_ids},
        server_ledger=data_dir / "server-ledger.jsonl",
        server_public_key=load_public_key(key_file),
    )
    report = build_report(audit)
    report_path.write_text(render_html(report), encoding="utf-8")
    return audit.ok, str(report.to_dict().get("verdict", ""))


def _baselines(
    plan: FederatedPlan, spec: ModelSpec, preprocessor: Preprocessor, split: Any, test: Any, run_dir: Path
) -> dict[str, Any]:
    from dp.training import use_threads

    use_threads(1)
    start = plan.initial_model(spec.num_features)
    datasets = {bank: preprocessor.transform(table) for bank, table in split.banks.items()}
    pooled_x = np.vstack([data.features for data in datasets.values()])
    pooled_y = np.concatenate([data.labels for data in datasets.values()])
    work = run_dir / "baselines"
    work.mkdir()
    centralized = train_centralized(spec, start, pooled_x, pooled_y)
    centralized_dp = train_dp_alone(plan, spec, start, pooled_x, pooled_y, work / "centralized-dp-accountant.json")
    local = {
        bank: evaluate(
            spec,
            train_dp_alone(plan, spec, start, data.features, data.labels, work / f"{bank}-accountant.json"),
            test.features,
            test.labels,
        )[0]
        for bank, data in datasets.items()
    }
    return {
        "auc_centralized": evaluate(spec, centralized, test.features, test.labels)[0],
        "auc_centralized_dp": evaluate(spec, centralized_dp, test.features, test.labels)[0],
        "auc_local": local,
    }


def _print_comparison(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title=f"test AUC on {summary['test_rows']} held-out loans")
    table.add_column("model")
    table.add_column("test AUC", justify="right")
    table.add_column("privacy")
    epsilon = max(summary["epsilon_per_bank"].values())
    table.add_row(
        "federated (secure aggregation + DP-SGD)",
        f"{summary['auc_federated']:.4f}",
        f"ε ≤ {epsilon:.2f} per bank, δ = {summary['delta']:g}",
    )
    participant = [value for value in summary["participant_epsilon_per_bank"].values() if value is not None]
    if participant:
        table.add_row(
            "  + participant-level Skellam in the ring",
            "",
            f"ε ≤ {max(participant):.2f} per bank's whole contribution, δ = {summary['participant_delta']:g}",
        )
    table.add_row("centralized, pooled data, non-private", f"{summary['auc_centralized']:.4f}", "none (raw data pooled)")
    table.add_row(
        "centralized, pooled data, DP-SGD",
        f"{summary['auc_centralized_dp']:.4f}",
        f"ε ≤ {summary['target_epsilon']:g} (raw data pooled)",
    )
    table.add_row("each bank alone, DP-SGD (mean)", f"{summary['auc_local_mean']:.4f}", f"ε ≤ {summary['target_epsilon']:g}")
    console.print(table)
    console.print(
        f"dropouts: {summary['dropouts']} (recovered); audit: {'verified' if summary['audit_ok'] else 'FAILED'} — {summary['audit_verdict']}"
    )
    console.print(
        f"summary: {summary['run_dir']}/summary.json   report: {summary['report']}   wall time {summary['wall_seconds']:.0f} s"
    )


def demo_command(
    banks: Annotated[int, typer.Option("--banks", min=3, max=5, help="Number of banks (regions), 3 to 5.")] = 5,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")] = 10,
    mode: Annotated[ProtocolMode, typer.Option("--mode", help="Secure-aggregation adversary mode.")] = ProtocolMode.ACTIVE,
    dropout: Annotated[bool, typer.Option("--dropout/--no-dropout", help="One bank drops out mid-protocol in one round.")] = True,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Parent of the run directory runs/<timestamp>/.")] = Path("runs"),
    target_epsilon: Annotated[float, typer.Option("--target-epsilon", help="Example-level epsilon per bank over the run.")] = 3.0,
    delta: Annotated[float, typer.Option("--delta", help="delta of the example-level guarantee.")] = 1e-5,
    local_epochs: Annotated[int, typer.Option("--local-epochs", min=1, help="Local DP-SGD epochs per round.")] = 1,
    learning_rate: Annotated[float, typer.Option("--learning-rate", help="Local DP-SGD learning rate.")] = 1.0,
    model: Annotated[ModelKind, typer.Option("--model", help="Shared model.")] = ModelKind.LOGISTIC_REGRESSION,
    update_clip: Annotated[
        float, typer.Option("--update-clip", help="L2 bound on each bank's model update before encoding.")
    ] = 10.0,
    participant_epsilon: Annotated[
        float | None,
        typer.Option(
            "--participant-epsilon", help="Also add participant-level Skellam noise in the ring for this epsilon over the run."
        ),
    ] = None,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the summary's main figures as one JSON line at the end.")
    ] = False,
) -> None:
    """Five banks train a credit-default model through the real server, with DP and secure aggregation."""
    try:
        config = DemoConfig(
            banks=banks, rounds=rounds, mode=mode, dropout=dropout, runs_dir=runs_dir, target_epsilon=target_epsilon,
            delta=delta, local_epochs=local_epochs, learning_rate=learning_rate, model=model, update_clip=update_clip,
            participant_epsilon=participant_epsilon,
        )  # fmt: skip
        summary = run_demo(config)
    except (FederatedError, ValueError) as error:
        typer.echo(f"secagg demo: {error}", err=True)
        raise typer.Exit(code=1) from None
    if json_output:
        keys = (
            "rounds",
            "auc_federated",
            "auc_centralized",
            "auc_centralized_dp",
            "auc_local_mean",
            "epsilon_per_bank",
            "delta",
            "dropouts",
            "report",
            "wall_seconds",
        )
        typer.echo(json.dumps({key: summary[key] for key in keys}, sort_keys=True))
