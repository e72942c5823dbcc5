"""Benchmark of secure aggregation in a Flower app: ``python -m bench flower [--quick]``.

The same Flower app (10 ClientApps in Flower's simulation engine, FedAvg, one float32
array of D parameters per client, D = 1e5 and 1e6) runs its fit rounds through this
project's protocol (:class:`clients.flower.SecAggWorkflow` with
:class:`clients.flower.SecAggMod`; active mode, t = 7, full graph, 32-bit ring) and
through Flower's own ``SecAggPlusWorkflow`` with ``secaggplus_mod`` (semi-honest, 10
shares, reconstruction threshold 7, its defaults otherwise), and through this
project's protocol in semi-honest mode (the same four message rounds as SecAgg+, still
with signed keys and verified reconstruction), rotating round by round in one
simulation per D, so all three see the same machine, the same Ray actors and
the same load. The first round of each is a warm-up (Ray starts its actors and imports
the apps; this project's workflow also binds nodes to the roster) and is not counted.

Figures: the median wall time of a fit round (from ``configure_fit`` to the new global
model), the ratios Flower / ours, the time per protocol stage, and the largest error of
the aggregate against the exact mean of the same updates. Each client's ``fit``
returns fixed arrays (no training), so the rounds measure secure aggregation and
Flower's message passing only.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
CLIENTS = 10
THRESHOLD = 7
DIMS = (100_000, 1_000_000)
CLIP = 8.0


def _one_simulation(dim: int, measured_rounds: int) -> dict:
    """Run one Flower simulation alternating both workflows; return the figures (in this process)."""
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    import numpy as np
    from flwr.app import Context, Message
    from flwr.app.message_type import MessageType
    from flwr.client import ClientApp, NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.compat.common import recorddict_compat as compat
    from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
    from flwr.simulation import run_simulation

    from clients.flower import BankSettings, Roster, SecAggMod, SecAggWorkflow
    from clients.flower.records import RECORD_KEY
    from clients.runtime.policy import ClientPolicy
    from secagg.config import ProtocolMode
    from secagg.hazmat.keys import SigningKey
    from secagg.hazmat.randomness import SystemRandom

    keys = tuple(SigningKey.generate(SystemRandom()) for _ in range(CLIENTS))
    roster = Roster({f"bank-{i}": key.public_bytes for i, key in enumerate(keys)})

    def update_of(partition: int) -> np.ndarray:
        return np.random.default_rng(partition).uniform(-1.0, 1.0, dim).astype(np.float32)

    class FixedUpdateClient(NumPyClient):
        def __init__(self, partition: int) -> None:
            self.partition = partition

        def fit(self, parameters, config):  # type: ignore[no-untyped-def]
            return [update_of(self.partition)], 10, {}

    def client_fn(context: Context):  # type: ignore[no-untyped-def]
        return FixedUpdateClient(int(context.node_config["partition-id"])).to_client()

    def bank_requiring(mode: ProtocolMode):  # type: ignore[no-untyped-def]
        def bank(context: Context) -> BankSettings:
            partition = int(context.node_config["partition-id"])
            return BankSettings(
                participant_id=f"bank-{partition}",
                identity=keys[partition],
                roster=roster,
                policy=ClientPolicy(required_mode=mode),
            )

        return bank

    our_mods = {
        "ours": SecAggMod(bank_requiring(ProtocolMode.ACTIVE)),
        "ours-hbc": SecAggMod(bank_requiring(ProtocolMode.HONEST_BUT_CURIOUS)),
    }
    names = ["ours", "ours-hbc", "flower"]
    schedule = names * (1 + measured_rounds)

    def either_protocol(msg: Message, ctxt: Context, call_next):  # type: ignore[no-untyped-def]
        """Bench-only dispatch by the round's place in the schedule: SecAggMod (active or
        semi-honest policy) for this project's records, secaggplus_mod for Flower's."""
        if msg.metadata.message_type == MessageType.TRAIN and RECORD_KEY in msg.content.config_records:
            return our_mods[schedule[int(msg.metadata.group_id) - 1]](msg, ctxt, call_next)
        return secaggplus_mod(msg, ctxt, call_next)

    client_app = ClientApp(client_fn=client_fn, mods=[either_protocol])

    class TimedSecAggPlus(SecAggPlusWorkflow):
        stage_seconds: dict[str, float]

        def _timed(self, name, method, *args):  # type: ignore[no-untyped-def]
            started = time.perf_counter()
            try:
                return method(*args)
            finally:
                self.stage_seconds[name] = time.perf_counter() - started

        def setup_stage(self, *args):  # type: ignore[no-untyped-def]
            self.stage_seconds = {}
            return self._timed("setup", super().setup_stage, *args)

        def share_keys_stage(self, *args):  # type: ignore[no-untyped-def]
            return self._timed("share keys", super().share_keys_stage, *args)

        def collect_masked_vectors_stage(self, *args):  # type: ignore[no-untyped-def]
            return self._timed("collect masked vectors", super().collect_masked_vectors_stage, *args)

        def unmask_stage(self, *args):  # type: ignore[no-untyped-def]
            return self._timed("unmask", super().unmask_stage, *args)

    ours = SecAggWorkflow(roster, clip=CLIP, max_weight=1000.0, threshold=THRESHOLD)
    ours_semi_honest = SecAggWorkflow(
        roster, clip=CLIP, max_weight=1000.0, threshold=THRESHOLD, mode=ProtocolMode.HONEST_BUT_CURIOUS
    )
    flower = TimedSecAggPlus(num_shares=CLIENTS, reconstruction_threshold=THRESHOLD, clipping_range=CLIP)
    workflows = {"ours": ours, "ours-hbc": ours_semi_honest, "flower": flower}
    figures: dict[str, dict[str, list]] = {name: {"seconds": [], "stages": [], "max_error": []} for name in workflows}
    exact_mean = np.mean([update_of(i).astype(np.float64) for i in range(CLIENTS)], axis=0)

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_fit=1.0,
            min_fit_clients=CLIENTS,
            min_available_clients=CLIENTS,
            fraction_evaluate=0.0,
            initial_parameters=ndarrays_to_parameters([np.zeros(dim, dtype=np.float32)]),
        )
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=len(schedule)), strategy=strategy)

        def alternate(grid: Grid, context: Context) -> None:
            server_round = int(context.state.config_records[MAIN_CONFIGS_RECORD]["current_round"])
            name = schedule[server_round - 1]
            started = time.perf_counter()
            workflows[name](grid, context)
            seconds = time.perf_counter() - started
            if server_round <= len(names):
                return
            model = parameters_to_ndarrays(
                compat.arrayrecord_to_parameters(context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True)
            )[0]
            figures[name]["seconds"].append(seconds)
            stages = flower.stage_seconds if name == "flower" else workflows[name].reports[-1].stage_seconds
            figures[name]["stages"].append(dict(stages))
            figures[name]["max_error"].append(float(np.max(np.abs(model.astype(np.float64) - exact_mean))))

        DefaultWorkflow(fit_workflow=alternate)(grid, legacy)

    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=CLIENTS,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    outcome = {}
    for name, data in figures.items():
        if not data["seconds"]:
            raise RuntimeError(f"no measured round of {name} completed")
        stage_names = list(data["stages"][0])
        outcome[name] = {
            "round_seconds": data["seconds"],
            "median_round_seconds": statistics.median(data["seconds"]),
            "median_stage_seconds": {s: statistics.median(stages[s] for stages in data["stages"]) for s in stage_names},
            "max_error": max(data["max_error"]),
        }
    last = ours.reports[-1]
    outcome["ours"]["scale"] = last.scale
    outcome["ours"]["survivors"] = len(last.final_survivors)
    return outcome


def flower_python() -> Path:
    """Flower's environment (``make install`` creates .venv-flower), or this interpreter if Flower is here."""
    candidate = Path(__file__).resolve().parent.parent / ".venv-flower" / "bin" / "python"
    return candidate if candidate.exists() else Path(sys.executable)


def _in_subprocess(dim: int, measured_rounds: int) -> dict:
    """Each D gets its own process: a fresh Ray, and the figures on the last line of stdout."""
    code = f"import json; from bench.flower import _one_simulation; print(json.dumps(_one_simulation({dim}, {measured_rounds})))"
    env = dict(os.environ, RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0")
    completed = subprocess.run(
        [str(flower_python()), "-c", code], capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent, env=env
    )
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-4000:])
        raise RuntimeError(f"the Flower simulation at D={dim} failed (exit {completed.returncode})")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def run(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    measured_rounds = 1 if "--quick" in argv else 5
    started = time.perf_counter()
    by_dim = {}
    for dim in DIMS:
        figures = _in_subprocess(dim, measured_rounds)
        figures["ratio_flower_over_ours"] = figures["flower"]["median_round_seconds"] / figures["ours"]["median_round_seconds"]
        figures["ratio_flower_over_ours_hbc"] = (
            figures["flower"]["median_round_seconds"] / figures["ours-hbc"]["median_round_seconds"]
        )
        by_dim[str(dim)] = figures
        print(
            f"flower D={dim:.0e}: ours {figures['ours']['median_round_seconds']:.2f} s "
            f"(semi-honest {figures['ours-hbc']['median_round_seconds']:.2f} s), "
            f"Flower SecAgg+ {figures['flower']['median_round_seconds']:.2f} s, "
            f"ratio {figures['ratio_flower_over_ours']:.2f}x",
            flush=True,
        )
    flwr_version = subprocess.run(
        [str(flower_python()), "-c", "import flwr; print(flwr.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()
    results = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count()},
        "flwr": flwr_version,
        "clients": CLIENTS,
        "threshold": THRESHOLD,
        "measured_rounds_each": measured_rounds,
        "wall_seconds": time.perf_counter() - started,
        "by_dim": by_dim,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "flower.json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    (RESULTS / "flower.md").write_text(_markdown(results))
    return results


def _markdown(results: dict) -> str:
    lines = [
        "# Secure aggregation in a Flower app: this project against Flower's SecAgg+",
        "",
        f"`python -m bench flower`. Flower {results['flwr']}, its simulation engine (Ray), {results['clients']} ClientApps, "
        f"threshold {results['threshold']}, FedAvg; the three variants rotate round by round in one simulation per D, "
        f"{results['measured_rounds_each']} measured rounds each (medians) after one warm-up round each. "
        f"Machine: {results['machine']['platform']}, Python {results['machine']['python']}, {results['machine']['cpus']} CPUs.",
        "",
        "| D | ours, active: round s | ours, semi-honest: round s | Flower SecAgg+ (semi-honest): round s | Flower / ours active | Flower / ours semi-honest | ours: max error | Flower: max error |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dim, figures in results["by_dim"].items():
        ours, hbc, flower = figures["ours"], figures["ours-hbc"], figures["flower"]
        lines.append(
            f"| {int(dim):.0e} | {ours['median_round_seconds']:.2f} | {hbc['median_round_seconds']:.2f} | "
            f"{flower['median_round_seconds']:.2f} | {figures['ratio_flower_over_ours']:.2f}x | "
            f"{figures['ratio_flower_over_ours_hbc']:.2f}x | {ours['max_error']:.1e} | {flower['max_error']:.1e} |"
        )
    lines += ["", "Median seconds per stage:", ""]
    for dim, figures in results["by_dim"].items():
        for name, label in (("ours", "ours (active)"), ("ours-hbc", "ours (semi-honest)"), ("flower", "Flower SecAgg+")):
            stages = ", ".join(f"{stage} {seconds:.2f}" for stage, seconds in figures[name]["median_stage_seconds"].items())
            lines.append(f"- D = {int(dim):.0e}, {label}: {stages}")
    lines += [
        "",
        "Max error: the largest |global model - exact mean of the same updates| after a round (float32 model).",
        "Ours, active (the default) has one stage more, R3, than Flower's semi-honest SecAgg+; ours, semi-honest",
        "has the same four message rounds. Both keep signed keys, AES-CTR masks and verified reconstruction;",
        "Flower's masks come from numpy's Mersenne Twister seeded with 32 bits (see docs/FLOWER.md).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    run()
