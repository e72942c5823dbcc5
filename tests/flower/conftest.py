"""Flower has its own environment (``make install``: .venv-flower), where ``make test`` runs
these tests; anywhere Flower is not installed each module skips, saying why."""

FLOWER_MISSING = "Flower is not installed here; it has its own environment: `make test` runs these in .venv-flower"
