"""Loader for the known-answer vector files in ``tests/secagg/vectors/``.

Each file is a JSON object with a ``source`` (where the numbers come from: an RFC
or NIST section, or "frozen by this implementation at commit X and cross-checked
by ..."), optional ``notes`` and a non-empty list of ``vectors``. The loader
refuses a file without a source, so no vector can be pinned without naming where
it came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS_DIR = Path(__file__).parent / "vectors"


class VectorFileError(ValueError):
    """A vector file that does not name its source or holds no vectors."""


def load_document(name: str) -> dict[str, Any]:
    """The whole vector file ``name``, after checking its header."""
    document = json.loads((VECTORS_DIR / name).read_text(encoding="utf-8"))
    source = document.get("source")
    if not isinstance(source, str) or not source.strip():
        raise VectorFileError(f"{name} does not name its source")
    vectors = document.get("vectors")
    if not isinstance(vectors, list) or not vectors:
        raise VectorFileError(f"{name} holds no vectors")
    return document


def load_vectors(name: str) -> list[dict[str, Any]]:
    """The ``vectors`` list of the vector file ``name``."""
    return load_document(name)["vectors"]


def vector_ids(vectors: list[dict[str, Any]]) -> list[str]:
    """Readable pytest ids: each vector's ``name``."""
    return [vector["name"] for vector in vectors]
