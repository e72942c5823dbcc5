"""Flower is an optional extra: without it these tests are skipped, with the reason shown."""

import pytest

pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]', which `make install` does)")
