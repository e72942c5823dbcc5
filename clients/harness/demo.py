"""``secagg demo``: a consortium of banks trains a credit-default model, with the shipped commands only.

Every step is a ``secagg`` command run as its own process, exactly as the README's
walk-through and ``examples/consortium/run.sh`` run them; the demo only starts them,
watches the server's admin API and the banks' progress logs, and prints what happens.
In a fresh ``runs/<UTC timestamp>/``:

1. ``secagg consortium example-data``: the shipped Lending Club loans (SHA-256 checked),
   a stratified hold-out test set and one CSV per bank by US region;
2. each bank and the auditor: ``secagg client keygen`` (passphrase-protected key); each
   bank drafts a schema from its own file (``secagg train --draft-schema``);
3. the coordinator: ``secagg consortium schema merge``, ``secagg consortium plan``,
   ``secagg consortium manifest create``; every member signs its own copy
   (``manifest sign``); the copies are combined (``manifest combine``);
4. the server: ``secagg server`` (SQLite, loopback, a free port, production checks on);
5. the coordinator ``secagg consortium run`` and one ``secagg train`` process per bank,
   each with its own key, data, policy (with its own budget) and work directory;
6. **a crash and a resume**: in round ``rounds // 2 + 1`` the demo SIGKILLs one bank's
   process as soon as the server has its masked input, waits until that stage has
   closed, and starts the same command again: the bank resumes the round from its state
   files (byte-identical messages) and the round completes; its privacy was charged
   once, before the masked input left;
7. ``secagg evaluate`` of the federated model on the test set; the same plan trained by
   each bank alone and on the pooled loans (``secagg train --local``, the pooled file
   standing for what no consortium can do) for comparison;
8. the auditor: ``secagg audit fetch`` (signed requests), ``secagg audit verify`` and
   ``secagg audit report`` scoped to the training by the manifest.

It writes ``summary.json`` (AUCs, epsilon per bank, delta, rounds, the resume, the audit
verdict) and ``audit.html``.

The DP noise is fresh in every run, and the hold-out set holds only about a hundred
defaults, so AUCs differ by a few hundredths between runs; the README quotes measured
figures.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from clients.runtime.errors import ClientError, ServerRefused
from secagg.config import ProtocolMode, minimum_threshold
from secagg.rounds import Round

MIN_BANKS = 3
MAX_BANKS = 5
BANK_IDS = ("bank-a", "bank-b", "bank-c", "bank-d", "bank-e")
STEP_TIMEOUT_SECONDS = 900.0
SERVER_START_SECONDS = 60.0
DEADLINES = {"R0": 300.0, "R1": 60.0, "R2": 60.0, "R3": 60.0, "R4": 60.0}
"""Stage deadlines the demo's coordinator uses: R0 covers the banks' training; the rest take a second on loopback."""


class DemoError(ClientError):
    """The demo could not complete (a command failed, a timeout); the message names the log to read."""


@dataclass(frozen=True)
class DemoConfig:
    banks: int = 5
    rounds: int = 10
    mode: ProtocolMode = ProtocolMode.ACTIVE
    restart: bool = True
    runs_dir: Path = Path("runs")
    target_epsilon: float = 3.0
    delta: float = 1e-5
    fraction: float = 1.0
    model: str = "logistic-regression"

    def __post_init__(self) -> None:
        if not MIN_BANKS <= self.banks <= MAX_BANKS:
            raise DemoError(f"the demo runs {MIN_BANKS} to {MAX_BANKS} banks, got {self.banks}")
        if self.rounds < 1:
            raise DemoError("the demo needs at least one round")
        object.__setattr__(self, "mode", ProtocolMode(self.mode))

    @property
    def bank_ids(self) -> list[str]:
        return list(BANK_IDS[: self.banks])

    @property
    def restarted_bank(self) -> str:
        return self.bank_ids[min(2, self.banks - 1)]

    @property
    def restart_round(self) -> int:
        """The training round (1-based) in which one bank is killed and restarted."""
        return self.rounds // 2 + 1

    @property
    def threshold(self) -> int:
        return minimum_threshold(self.mode, self.banks)


def secagg_command(*arguments: str) -> list[str]:
    """The shipped command line, run by this interpreter (``python -m secagg_cli`` is ``secagg``)."""
    return [sys.executable, "-m", "secagg_cli", *arguments]


class Runner:
    """Runs ``secagg`` commands in the run directory, each with its own log file."""

    def __init__(self, run_dir: Path, console: Any) -> None:
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.console = console
        self.environment = {key: value for key, value in os.environ.items() if not key.startswith("SECAGG_")}
        self.environment["PYTHONUNBUFFERED"] = "1"

    def run(self, name: str, *arguments: str) -> str:
        """Run one command to completion; its stdout, or :class:`DemoError` naming its log."""
        log = self.logs / f"{name}.log"
        with open(log, "wb") as errors:
            done = subprocess.run(
                secagg_command(*arguments), cwd=self.run_dir, stdout=subprocess.PIPE, stderr=errors,
                env=self.environment, timeout=STEP_TIMEOUT_SECONDS, check=False,
            )  # fmt: skip
        if done.returncode != 0:
            raise DemoError(f"`secagg {' '.join(arguments[:2])}` exited with {done.returncode}: see {log}")
        return done.stdout.decode("utf-8")

    def run_all(self, commands: dict[str, tuple[str, ...]]) -> None:
        """Run independent commands at once (each bank's own step); :class:`DemoError` if one fails."""
        started = {name: self.start(name, *arguments) for name, arguments in commands.items()}
        for name, process in started.items():
            if process.wait(timeout=STEP_TIMEOUT_SECONDS) != 0:
                raise DemoError(
                    f"`secagg {' '.join(commands[name][:2])}` exited with {process.returncode}: see {self.logs / name}.log"
                )

    def start(self, name: str, *arguments: str) -> subprocess.Popen[bytes]:
        """Start a long-running command (server, coordinator, bank); its output goes to its log."""
        log = open(self.logs / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child until it exits
        process = subprocess.Popen(
            secagg_command(*arguments), cwd=self.run_dir, stdout=log, stderr=subprocess.STDOUT,
            env=self.environment, start_new_session=True,
        )  # fmt: skip
        log.close()
        return process


def _fresh_run_dir(runs_dir: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for suffix in [""] + [f"-{index}" for index in range(1, 100)]:
        candidate = runs_dir / f"{stamp}{suffix}"
        try:
            candidate.mkdir(parents=True)
            return candidate.resolve()
        except FileExistsError:
            continue
    raise DemoError(f"cannot create a fresh run directory under {runs_dir}")


def bank_policy(budget_epsilon: float, delta: float, mode: ProtocolMode) -> str:
    """The policy each demo bank runs with (the README's example policy)."""
    return (
        "min_cohort_size = 3\n"
        f'required_mode = "{mode.value}"\n'
        "[dp]\n"
        "required = true\n"
        "allow_exact_statistics = true\n"
        "[budget]\n"
        'state_dir = "budget"\n'
        "[budget.example]\n"
        f"max_epsilon = {budget_epsilon!r}\n"
        f"delta = {delta!r}\n"
    )


def _wait_for_url(process: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + SERVER_START_SECONDS
    pattern = re.compile(r'"event": "server_listening".*"url": "(http://127\.0\.0\.1:\d+)"')
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DemoError(f"the server exited with {process.returncode}: see {log}")
        match = pattern.search(log.read_text(errors="replace")) if log.exists() else None
        if match:
            return match.group(1)
        time.sleep(0.1)
    raise DemoError(f"the server did not start within {SERVER_START_SECONDS:g} s: see {log}")


def _stop(process: subprocess.Popen[bytes] | None, *, kill: bool = False) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGKILL if kill else signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=20)


def _wait_all(processes: dict[str, subprocess.Popen[bytes]], logs: Path) -> None:
    """Wait for every process to exit 0; the first one that fails stops the demo (its log named)."""
    deadline = time.monotonic() + 2 * STEP_TIMEOUT_SECONDS
    while True:
        codes = {name: process.poll() for name, process in processes.items()}
        for name, code in codes.items():
            if code not in (None, 0):
                log = logs / ("coordinator.log" if name == "coordinator" else f"train-{name}.log")
                raise DemoError(f"{name} exited with {code}: see {log}")
        if all(code == 0 for code in codes.values()):
            return
        if time.monotonic() > deadline:
            raise DemoError(f"{', '.join(name for name, code in codes.items() if code is None)} did not finish: see {logs}")
        time.sleep(0.2)


def _last_json(text: str) -> dict[str, Any]:
    return dict(json.loads(text.strip().splitlines()[-1]))


def _crash_and_resume(
    config: DemoConfig, admin: Any, training_id: str, banks: dict[str, subprocess.Popen[bytes]], start_bank: Any, console: Any
) -> dict[str, Any] | None:
    """SIGKILL one bank as soon as the server holds its masked input in the chosen round; restart it once R2 closed.

    "Holds its masked input": the bank is among R2's responders, or the round is already
    past R2 (the stage closes only once the bank's input is in or its deadline passed).
    """
    bank_id = config.restarted_bank
    index = config.bank_ids.index(bank_id)
    deadline = time.monotonic() + STEP_TIMEOUT_SECONDS
    round_id = None
    while time.monotonic() < deadline:
        if any(process.poll() not in (None, 0) for process in banks.values()):
            return None
        if round_id is None:
            try:
                listed = admin.training(training_id)["rounds"]
            except ServerRefused as refused:
                if refused.problem_type != "training-not-found":
                    raise
                listed = []  # the coordinator has not registered it yet
            running = [r for r in listed if r["round"] == config.restart_round and r["outcome"] is None]
            round_id = running[0]["round_id"] if running else None
            time.sleep(0.05)
            continue
        status = admin.round_status(round_id)
        past_r2 = status["stage"] in (Round.CONSISTENCY_CHECK.value, Round.UNMASKING.value, "completed")
        in_r2 = status["stage"] == Round.MASKED_INPUT_COLLECTION.value and index in status["responded"]
        if status["outcome"] == "aborted":
            round_id = None
            continue
        if past_r2 or in_r2:
            _stop(banks[bank_id], kill=True)
            killed_in = status["stage"]
            console.print(
                f"[yellow]{bank_id} SIGKILLed in round {config.restart_round} ({killed_in}), its masked input sent[/yellow]"
            )
            while admin.round_status(round_id)["stage"] == Round.MASKED_INPUT_COLLECTION.value:
                time.sleep(0.05)
            banks[bank_id] = start_bank(bank_id)
            console.print(f"[yellow]{bank_id} restarted with the same command: it resumes from its state files[/yellow]")
            return {"bank": bank_id, "round": config.restart_round, "round_id": round_id, "stage_at_kill": killed_in}
        time.sleep(0.005)
    return None


def run_demo(config: DemoConfig, *, console: Any = None) -> dict[str, Any]:
    """Run the whole demo (module docstring); returns the summary, also written to ``summary.json``."""
    from rich.console import Console

    from clients.consortium.admin import AdminClient

    console = console or Console()
    started = time.monotonic()
    run_dir = _fresh_run_dir(Path(config.runs_dir))
    runner = Runner(run_dir, console)
    bank_ids = config.bank_ids
    training_id = re.sub(r"[^a-z0-9._-]", "-", f"demo-{run_dir.name.lower()}")[:63]
    console.print(f"[bold]secagg demo[/bold]: {config.banks} banks, {config.rounds} rounds, run directory {run_dir}")

    runner.run(
        "example-data",
        "consortium",
        "example-data",
        "--banks",
        str(config.banks),
        "--out",
        "data",
        "--fraction",
        str(config.fraction),
    )
    members = [*bank_ids, "auditor"]
    for member in members:
        directory = run_dir / member
        directory.mkdir(mode=0o700)
        passphrase = directory / "passphrase"
        passphrase.write_text(secrets.token_urlsafe(24) + "\n")
        passphrase.chmod(0o600)
    runner.run_all(
        {f"keygen-{member}": ("client", "keygen", "--out", f"{member}/identity.key", "--passphrase-file", f"{member}/passphrase")
         for member in members}
    )  # fmt: skip
    runner.run_all(
        {f"draft-{bank}": ("train", "--data", f"data/{bank}.csv", "--target", "Class", "--positive", "bad",
                           "--draft-schema", f"{bank}/draft-schema.json") for bank in bank_ids}
    )  # fmt: skip
    coordinator_dir = run_dir / "coordinator"
    coordinator_dir.mkdir()
    runner.run("schema-merge", "consortium", "schema", "merge", *[f"{bank}/draft-schema.json" for bank in bank_ids],
               "--out", "coordinator/schema.json")  # fmt: skip
    runner.run("plan", "consortium", "plan", "--out", "coordinator/plan.json", "--rounds", str(config.rounds),
               "--target-epsilon", repr(config.target_epsilon), "--delta", repr(config.delta), "--mode", config.mode.value,
               "--model", config.model)  # fmt: skip
    roster = [argument for bank in bank_ids for argument in ("--bank", f"{bank}={bank}/identity.key.pub")]
    runner.run("manifest-create", "consortium", "manifest", "create", "--training-id", training_id,
               "--schema", "coordinator/schema.json", "--plan", "coordinator/plan.json", *roster,
               "--auditor", "auditor=auditor/identity.key.pub", "--out", "coordinator/manifest.unsigned.json")  # fmt: skip
    runner.run_all(
        {f"sign-{member}": ("consortium", "manifest", "sign", "coordinator/manifest.unsigned.json",
                            "--key", f"{member}/identity.key", "--passphrase-file", f"{member}/passphrase",
                            "--out", f"{member}/manifest.json") for member in members}
    )  # fmt: skip
    runner.run("manifest-combine", "consortium", "manifest", "combine", *[f"{member}/manifest.json" for member in members],
               "--out", "coordinator/manifest.json")  # fmt: skip
    console.print(f"manifest of {training_id} signed by {', '.join(members)}")

    server_dir = run_dir / "server"
    server_dir.mkdir()  # the server creates its data directory itself, 0700
    token = server_dir / "admin-token"
    token.write_text(secrets.token_urlsafe(32) + "\n")
    token.chmod(0o600)
    server = runner.start("server", "server", "--host", "127.0.0.1", "--port", "0", "--data-dir", "server/data",
                          "--admin-token-file", "server/admin-token")  # fmt: skip
    processes: dict[str, subprocess.Popen[bytes]] = {}
    coordinator: subprocess.Popen[bytes] | None = None
    resume: dict[str, Any] | None = None
    try:
        url = _wait_for_url(server, runner.logs / "server.log")
        console.print(f"server up at {url} (SQLite in {server_dir / 'data'})")
        for bank in bank_ids:
            (run_dir / bank / "policy.toml").write_text(bank_policy(config.target_epsilon, config.delta, config.mode))
        deadlines = [argument for stage, seconds in DEADLINES.items() for argument in ("--deadline", f"{stage}={seconds:g}")]
        coordinator = runner.start("coordinator", "consortium", "run", "--manifest", "coordinator/manifest.json",
                                   "--server", url, "--admin-token-file", "server/admin-token", *deadlines, "--json")  # fmt: skip

        def start_bank(bank: str) -> subprocess.Popen[bytes]:
            return runner.start(f"train-{bank}", "train", "--data", f"data/{bank}.csv", "--work-dir", f"{bank}/work",
                                "--manifest", "coordinator/manifest.json", "--server", url, "--key", f"{bank}/identity.key",
                                "--passphrase-file", f"{bank}/passphrase", "--policy", f"{bank}/policy.toml", "--json")  # fmt: skip

        for bank in bank_ids:
            processes[bank] = start_bank(bank)
        if config.restart:
            with AdminClient(url, token.read_text().strip(), unavailable_timeout=30.0) as admin:
                resume = _crash_and_resume(config, admin, training_id, processes, start_bank, console)
        _wait_all({"coordinator": coordinator, **processes}, runner.logs)
        coordinator_summary = _last_json((runner.logs / "coordinator.log").read_text())
        finals = {bank: _last_json((runner.logs / f"train-{bank}.log").read_text()) for bank in bank_ids}
        console.print(f"training done: {coordinator_summary['rounds_completed']} rounds; auditing")
        runner.run("audit-fetch", "audit", "fetch", "--server", url, "--key", "auditor/identity.key", "--passphrase-file",
                   "auditor/passphrase", "--participant-id", "auditor", "--training", training_id, "--out", "auditor/fetched")  # fmt: skip
    finally:
        _stop(coordinator)
        for bank_process in processes.values():
            _stop(bank_process)
        _stop(server)
    audit_arguments = [*[finals[bank]["ledger"] for bank in bank_ids], "--manifest", "coordinator/manifest.json", "--server-ledger", "auditor/fetched/server-ledger.jsonl",
                       "--server-public-key", "server/data/server-ledger.key.pub"]  # fmt: skip
    verification = subprocess.run(secagg_command("audit", "verify", *audit_arguments, "--json"), cwd=run_dir,
                                  capture_output=True, env=runner.environment, check=False)  # fmt: skip
    audit_ok = verification.returncode == 0
    report = run_dir / "audit.html"
    subprocess.run(secagg_command("audit", "report", *audit_arguments, "--out", str(report)), cwd=run_dir,
                   capture_output=True, env=runner.environment, check=False)  # fmt: skip

    console.print("evaluating on the test set, and training each bank alone and the pooled loans (secagg train --local)")
    pooled = run_dir / "data" / "pooled.csv"
    lines = [(run_dir / "data" / f"{bank}.csv").read_text().splitlines() for bank in bank_ids]
    pooled.write_text("\n".join([lines[0][0], *[row for table in lines for row in table[1:]]]) + "\n")
    local_runs = {name: runner.start(f"local-{name}", "train", "--local", "--data", f"data/{name}.csv", "--manifest",
                                     "coordinator/manifest.json", "--holdout", "0", "--work-dir", f"baselines/{name}")
                  for name in [*bank_ids, "pooled"]}  # fmt: skip
    for name, process in local_runs.items():
        if process.wait(timeout=STEP_TIMEOUT_SECONDS) != 0:
            raise DemoError(f"the local training of {name} failed: see {runner.logs / f'local-{name}.log'}")

    def auc(model: str) -> float:
        return float(
            runner.run(
                f"evaluate-{Path(model).parent.name}", "evaluate", "--model", model, "--data", "data/test.csv", "--metric", "auc"
            )
        )

    federated = _last_json(runner.run("evaluate-federated", "evaluate", "--model", f"{bank_ids[0]}/work/model.json",
                                      "--data", "data/test.csv", "--json"))  # fmt: skip
    model_hashes = {
        bank: json.loads((run_dir / bank / "work" / "model.json").read_text())["parameters_sha256"] for bank in bank_ids
    }
    auc_local = {bank: auc(f"baselines/{bank}/model.json") for bank in bank_ids}
    summary = {
        "training_id": training_id,
        "banks": bank_ids,
        "rounds": config.rounds,
        "rounds_completed": coordinator_summary["rounds_completed"],
        "aborted_rounds": coordinator_summary["aborted_rounds"],
        "auc_federated": federated["auc"],
        "accuracy_federated": federated["accuracy"],
        "balanced_accuracy_federated": federated["balanced_accuracy"],
        "threshold": federated["threshold"],
        "auc_pooled_dp": auc("baselines/pooled/model.json"),
        "auc_local": auc_local,
        "auc_local_mean": sum(auc_local.values()) / len(auc_local),
        "epsilon_per_bank": {bank: finals[bank]["epsilon"] for bank in bank_ids},
        "budget_epsilon": config.target_epsilon,
        "delta": config.delta,
        "model_sha256": model_hashes,
        "same_model_everywhere": len(set(model_hashes.values())) == 1,
        "resume": resume,
        "audit_ok": audit_ok,
        "audit": json.loads(verification.stdout) if verification.stdout.strip() else None,
        "report": str(report),
        "threshold_rule": f"{config.threshold} of {config.banks} ({config.mode.value})",
        "run_dir": str(run_dir),
        "wall_seconds": time.monotonic() - started,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    _print_comparison(console, summary)
    return summary


def _print_comparison(console: Any, summary: dict[str, Any]) -> None:
    from rich.table import Table

    table = Table(title="test AUC on the held-out loans")
    table.add_column("model")
    table.add_column("test AUC", justify="right")
    table.add_column("privacy")
    epsilon = max(summary["epsilon_per_bank"].values())
    table.add_row("federated (secure aggregation + DP-SGD)", f"{summary['auc_federated']:.4f}",
                  f"ε ≤ {epsilon:.2f} per bank, δ = {summary['delta']:g}")  # fmt: skip
    table.add_row(
        "pooled loans, DP-SGD (what no bank may do)", f"{summary['auc_pooled_dp']:.4f}", f"ε ≤ {summary['budget_epsilon']:g}"
    )
    for bank, value in summary["auc_local"].items():
        table.add_row(f"{bank} alone, DP-SGD", f"{value:.4f}", f"ε ≤ {summary['budget_epsilon']:g}")
    console.print(table)
    resume = summary["resume"]
    if resume:
        console.print(f"{resume['bank']} was killed in round {resume['round']} after its masked input and resumed it")
    console.print(
        f"same model at every bank: {summary['same_model_everywhere']}; audit: {'verified' if summary['audit_ok'] else 'FAILED'}"
    )
    console.print(
        f"summary: {summary['run_dir']}/summary.json   report: {summary['report']}   wall time {summary['wall_seconds']:.0f} s"
    )


def demo_command(
    banks: Annotated[int, typer.Option("--banks", min=MIN_BANKS, max=MAX_BANKS, help="Number of banks (regions), 3 to 5.")] = 5,
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Federated rounds.")] = 10,
    mode: Annotated[ProtocolMode, typer.Option("--mode", help="Secure-aggregation adversary mode.")] = ProtocolMode.ACTIVE,
    restart: Annotated[bool, typer.Option("--restart/--no-restart", help="Kill one bank mid-round and let it resume.")] = True,
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Parent of the run directory runs/<timestamp>/.")] = Path("runs"),
    target_epsilon: Annotated[float, typer.Option("--target-epsilon", help="Example-level epsilon per bank over the run.")] = 3.0,
    fraction: Annotated[float, typer.Option("--fraction", min=0.01, max=1.0, help="Share of each bank's loans to use.")] = 1.0,
    model: Annotated[str, typer.Option("--model", help="logistic-regression or mlp.")] = "logistic-regression",
    json_output: Annotated[bool, typer.Option("--json", help="Print the summary as one JSON line at the end.")] = False,
) -> None:
    """A consortium of banks trains a credit-default model through the real server, with the shipped commands."""
    try:
        summary = run_demo(
            DemoConfig(
                banks=banks,
                rounds=rounds,
                mode=mode,
                restart=restart,
                runs_dir=runs_dir,
                target_epsilon=target_epsilon,
                fraction=fraction,
                model=model,
            )
        )
    except ClientError as error:
        typer.echo(f"secagg demo: {error}", err=True)
        raise typer.Exit(code=1) from None
    if json_output:
        typer.echo(json.dumps(summary, sort_keys=True))
