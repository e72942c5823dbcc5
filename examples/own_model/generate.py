"""Deterministic card-transaction histories for the own-model example: one CSV per bank and a test set.

    python examples/own_model/generate.py --out data/ [--banks 3] [--customers 600] [--seed 1]

Each row is a customer: for each of the last 8 transactions (oldest first) its amount and
whether the merchant is abroad, and the label. A customer is ``fraud`` when a card-testing
pattern ends the history: a run of small foreign transactions followed by a large foreign
one. Some honest customers have the same transactions in the other order (a large purchase
abroad, then small ones), so the order matters, which is what the sequence model reads; 3%
of the labels are flipped. Fraudsters are about one customer in five; the banks'
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
    amounts = spending * 40.0 * np.exp(2.4 * (u[0] - 0.5) * 2.0)
    foreign = u[1] < 0.2
    fraud = uniform_floats(source, count) < 0.2
    runs = (2 + np.floor(uniform_floats(source, count) * 2)).astype(int)
    large = spending * (150.0 + 300.0 * uniform_floats(source, count))
    decoys = ~fraud & (uniform_floats(source, count) < 0.3)
    for row in np.flatnonzero(fraud | decoys):
        first = STEPS - 1 - runs[row]
        small = 1.0 + 19.0 * u[2, row, first:-1]
        if fraud[row]:  # small foreign transactions, then a large one: the card-testing pattern
            amounts[row, first:-1], amounts[row, -1] = small, large[row]
        else:  # the same transactions in the other order: a large purchase abroad, then small ones
            amounts[row, first], amounts[row, first + 1 :] = large[row], small
        foreign[row, first:] = True
    flipped = uniform_floats(source, count) < 0.03  # label noise: no model is perfect on these
    return amounts, foreign, fraud ^ flipped


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
