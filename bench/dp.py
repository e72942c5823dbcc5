"""Benchmarks of dp/: participant-level noise in the ring and example-level DP-SGD.

Figures (medians of repeated runs on this machine, each against an in-run baseline):

1. Skellam noise for 1e6 coordinates from the CSPRNG (``os.urandom`` and an AES-256-CTR
   keystream), versus numpy's default generator (PCG64, *not* a CSPRNG: baseline only).
   Plus a bank's whole participant-level encoding (clip, rotate, round, noise, ring) and
   the server's decoding for the same dimension.
2. The Gaussian sampler of DP-SGD (four-sample Holohan-Braghin sum from the CSPRNG)
   versus torch's and numpy's default generators (baselines, not CSPRNGs).
3. Opacus DP-SGD epoch time versus the same training without DP (ratio), single thread
   (``torch.set_num_threads(1)``), on a synthetic 10,000 x 23 tabular dataset, MLP.

Run: ``python -m bench dp``. Writes ``bench/results/dp.md`` and ``bench/results/dp.json``.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from dp.mechanisms.distributed import DistributedDPConfig, decode_aggregate, encode_update
from dp.mechanisms.noise import gaussian_noise, skellam_noise
from secagg.hazmat.randomness import DeterministicRandom, SystemRandom

RESULTS = Path(__file__).resolve().parent / "results"
DIMENSION = 1_000_000
REPEATS = 5
ROWS, FEATURES, HIDDEN = 10_000, 23, 32
EXPECTED_BATCH = 256
EPOCH_REPEATS = 3


def _median_seconds(action: Callable[[], object], repeats: int = REPEATS) -> float:
    action()  # warm-up: tables, caches, lazy imports
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _aes_ctr_source() -> DeterministicRandom:
    """An AES-256-CTR keystream under a fresh 256-bit key from the OS."""
    return DeterministicRandom(os.urandom(32))


def _participant_noise() -> list[dict[str, object]]:
    config = DistributedDPConfig.with_noise_multiplier(
        dimension=DIMENSION, clip_norm=1.0, scale=2.0**14, noise_multiplier=1.0, min_survivors=10, max_clients=20
    )
    variance = config.per_client_variance
    system = SystemRandom()
    aes = _aes_ctr_source()
    baseline_generator = np.random.default_rng()
    mean = variance / 2.0

    def numpy_skellam() -> np.ndarray:
        return baseline_generator.poisson(mean, DIMENSION) - baseline_generator.poisson(mean, DIMENSION)

    baseline = _median_seconds(numpy_skellam)
    rows: list[dict[str, object]] = [
        {
            "figure": f"Skellam noise, {DIMENSION:,} coords, variance {variance:.3g}",
            "variant": "numpy default generator (PCG64; baseline, not a CSPRNG)",
            "seconds": baseline,
            "ratio_to_baseline": 1.0,
        }
    ]
    for label, source in (("CSPRNG: os.urandom (SystemRandom)", system), ("CSPRNG: AES-256-CTR keystream", aes)):
        seconds = _median_seconds(lambda source=source: skellam_noise(source, DIMENSION, variance=variance))
        rows.append(
            {
                "figure": rows[0]["figure"],
                "variant": label,
                "seconds": seconds,
                "ratio_to_baseline": seconds / baseline,
            }
        )
    update = np.full(DIMENSION, 0.9 / math.sqrt(DIMENSION))
    seed = os.urandom(32)
    encode = _median_seconds(lambda: encode_update(update, config, rotation_seed=seed, source=system))
    encoded = encode_update(update, config, rotation_seed=seed, source=system).values
    decode = _median_seconds(lambda: decode_aggregate(encoded, config, rotation_seed=seed, survivors=config.min_survivors))
    for label, seconds in (
        ("bank: clip + rotate + round + noise + ring (os.urandom)", encode),
        ("server: ring sum -> unscale + unrotate", decode),
    ):
        rows.append(
            {
                "figure": f"participant-level encoding, {DIMENSION:,} coords (padded {config.padded_dimension:,})",
                "variant": label,
                "seconds": seconds,
                "ratio_to_baseline": seconds / baseline,
            }
        )
    return rows


def _gaussian_sampler() -> list[dict[str, object]]:
    import torch

    torch.set_num_threads(1)
    count = DIMENSION
    generator = np.random.default_rng()
    baseline = _median_seconds(lambda: generator.standard_normal(count))
    torch_default = _median_seconds(lambda: torch.normal(0.0, 1.0, size=(count,)))
    system = SystemRandom()
    aes = _aes_ctr_source()
    variants = [
        ("numpy default generator (baseline, not a CSPRNG)", baseline),
        ("torch.normal default generator (Opacus without secure_mode; not a CSPRNG)", torch_default),
        (
            "CSPRNG os.urandom, Box-Muller, 1 sample (no float hardening)",
            _median_seconds(lambda: gaussian_noise(system, count, std=1.0, summands=1)),
        ),
        (
            "CSPRNG os.urandom, Box-Muller, sum of 4 (Holohan-Braghin)",
            _median_seconds(lambda: gaussian_noise(system, count, std=1.0)),
        ),
        (
            "CSPRNG AES-256-CTR, Box-Muller, sum of 4 (Holohan-Braghin)",
            _median_seconds(lambda: gaussian_noise(aes, count, std=1.0)),
        ),
    ]
    return [
        {
            "figure": f"Gaussian noise, {count:,} samples",
            "variant": label,
            "seconds": seconds,
            "ratio_to_baseline": seconds / baseline,
        }
        for label, seconds in variants
    ]


def _dp_sgd_epoch() -> list[dict[str, object]]:
    import torch

    from dp.models import ModelKind, ModelSpec
    from dp.training import BankTrainer, DPSGDConfig, FixedNoise, build_model, initial_parameters, load_parameters

    torch.set_num_threads(1)
    generator = np.random.default_rng(0)  # synthetic data only; nothing privacy-relevant
    features = generator.standard_normal((ROWS, FEATURES)).astype(np.float32)
    labels = (features @ generator.standard_normal(FEATURES) + 0.5 * generator.standard_normal(ROWS) > 0).astype(np.float32)
    spec = ModelSpec(ModelKind.MLP, FEATURES, hidden_units=HIDDEN)
    sample_rate = EXPECTED_BATCH / ROWS
    steps = DPSGDConfig.steps_for_epochs(1, sample_rate)
    config = DPSGDConfig(
        max_grad_norm=1.0,
        sample_rate=sample_rate,
        local_steps=steps,
        learning_rate=0.5,
        noise=FixedNoise(1.0),
        delta=1e-5,
    )
    start_parameters = initial_parameters(spec, SystemRandom())

    with tempfile.TemporaryDirectory() as directory:
        trainer = BankTrainer(spec, config, accountant_path=Path(directory) / "accountant.json")
        dp_epoch = _median_seconds(lambda: trainer.train_round(start_parameters, features, labels), EPOCH_REPEATS)

    x = torch.from_numpy(features)
    y = torch.from_numpy(labels)

    def plain_epoch() -> None:
        model = build_model(spec)
        load_parameters(model, start_parameters)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        order = torch.from_numpy(generator.permutation(ROWS))
        for step in range(steps):
            batch = order[(step * EXPECTED_BATCH) % ROWS :][:EXPECTED_BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x[batch]).squeeze(-1), y[batch])
            loss.backward()
            optimizer.step()

    baseline = _median_seconds(plain_epoch, EPOCH_REPEATS)
    figure = f"one epoch, {ROWS:,} x {FEATURES} rows, MLP({HIDDEN}), {steps} steps of ~{EXPECTED_BATCH}, 1 thread"
    return [
        {"figure": figure, "variant": "torch SGD without DP (baseline)", "seconds": baseline, "ratio_to_baseline": 1.0},
        {
            "figure": figure,
            "variant": "Opacus DP-SGD, CSPRNG noise + Poisson sampling, accountant saved",
            "seconds": dp_epoch,
            "ratio_to_baseline": dp_epoch / baseline,
        },
    ]


def _environment() -> dict[str, object]:
    import opacus
    import torch

    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "opacus": opacus.__version__,
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def _markdown(rows: list[dict[str, object]], environment: dict[str, object]) -> str:
    lines = [
        "# dp benchmarks",
        "",
        "Medians of repeated runs; ratios are against the baseline measured in the same run.",
        "Baselines marked 'not a CSPRNG' are for comparison only and never used for privacy.",
        "",
        "| figure | variant | seconds | ratio to baseline |",
        "|---|---|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['figure']} | {row['variant']} | {row['seconds']:.4f} | {row['ratio_to_baseline']:.2f} |")
    lines += ["", "Environment: " + ", ".join(f"{key} {value}" for key, value in environment.items()), ""]
    return "\n".join(lines)


def run() -> None:
    """Measure, print the table, write ``bench/results/dp.md`` and ``dp.json``."""
    rows = _participant_noise() + _gaussian_sampler() + _dp_sgd_epoch()
    environment = _environment()
    markdown = _markdown(rows, environment)
    print(markdown)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dp.md").write_text(markdown, encoding="utf-8")
    (RESULTS / "dp.json").write_text(
        json.dumps({"suite": "dp", "environment": environment, "results": rows}, indent=2) + "\n", encoding="utf-8"
    )


if __name__ == "__main__":
    run()
