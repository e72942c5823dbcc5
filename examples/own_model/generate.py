"""Deterministic card-transaction histories for the own-model example: one CSV per bank and a test set.

    python examples/own_model/generate.py --out data/ [--banks 3] [--customers 600] [--seed 1]

Each row is a customer: for each of the last 8 transactions (oldest first) its amount and
whether the merchant is abroad, and the label. A customer is ``fraud`` when a card-testing
pattern ends the history: a run of small foreign transactions followed by a large foreign
one. The order matters (the same amounts in another order are not the pattern), which is
what the sequence model learns. Fraudsters are about one customer in five; the banks'
customers differ in spending level. Same seed, same files (secagg's deterministic CSPRNG
stream, not Python's or numpy's generators).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from secagg.hazmat.randomness import DeterministicRandom, uniform_floats

STEPS = 8


def customers(count: int, seed: int, spending: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Amounts and foreign flags (count x STEPS) and the fraud labels of ``count`` customers."""
    source = DeterministicRandom.from_int(seed)
    u = uniform_floats(source, count * STEPS * 3).reshape(3, count, STEPS)
    amounts = spending * np.exp(1.2 * (u[0] - 0.5) * 2.0) * 40.0
    foreign = u[1] < 0.1
    fraud = uniform_floats(source, count) < 0.2
    start = (STEPS - 4 + np.floor(uniform_floats(source, count) * 2)).astype(int)
    for row in np.flatnonzero(fraud):
        first = start[row]
        amounts[row, first:-1] = 1.0 + 2.0 * u[2, row, first:-1]
        amounts[row, -1] = spending * (400.0 + 300.0 * u[2, row, -1])
        foreign[row, first:] = True
    decoys = ~fraud & (uniform_floats(source, count) < 0.2)
    for row in np.flatnonzero(decoys):  # a large foreign purchase without the testing run before it
        amounts[row, 0] = spending * (400.0 + 300.0 * u[2, row, 0])
        foreign[row, 0] = True
    return amounts, foreign, fraud


def write_csv(path: Path, amounts: np.ndarray, foreign: np.ndarray, fraud: np.ndarray) -> None:
    header = [f"t{step}_{name}" for step in range(STEPS) for name in ("amount", "foreign")] + ["label"]
    lines = [",".join(header)]
    for row in range(fraud.size):
        cells = [f"{amounts[row, step]:.2f},{int(foreign[row, step])}" for step in range(STEPS)]
        lines.append(",".join(cells) + ("," + ("fraud" if fraud[row] else "ok")))
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--banks", type=int, default=3)
    parser.add_argument("--customers", type=int, default=600, help="customers per bank")
    parser.add_argument("--seed", type=int, default=1)
    arguments = parser.parse_args()
    arguments.out.mkdir(parents=True, exist_ok=True)
    for index in range(arguments.banks):
        name = f"bank-{chr(ord('a') + index)}"
        write_csv(arguments.out / f"{name}.csv", *customers(arguments.customers, arguments.seed * 100 + index, 1.0 + 0.3 * index))
        print(f"{arguments.out / (name + '.csv')}: {arguments.customers} customers")
    write_csv(arguments.out / "test.csv", *customers(2 * arguments.customers, arguments.seed * 100 + 99, 1.3))
    print(f"{arguments.out / 'test.csv'}: {2 * arguments.customers} customers (target label, positive value fraud)")


if __name__ == "__main__":
    main()
