"""The known-answer vector files themselves: each names its source and is used by a test."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.secagg.kat import VECTORS_DIR, VectorFileError, load_document

VECTOR_FILES = sorted(path.name for path in VECTORS_DIR.glob("*.json"))
TEST_SOURCES = "\n".join(
    path.read_text(encoding="utf-8") for path in Path(__file__).parent.glob("test_*.py") if path.name != Path(__file__).name
)


def test_the_vector_directory_holds_files() -> None:
    assert len(VECTOR_FILES) >= 9


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_every_vector_file_names_its_source_and_holds_named_vectors(name: str) -> None:
    document = load_document(name)
    assert len(document["source"]) >= 40
    names = [vector["name"] for vector in document["vectors"]]
    assert all(isinstance(n, str) and n for n in names)
    assert len(set(names)) == len(names), "vector names must be unique"


@pytest.mark.parametrize("name", VECTOR_FILES)
def test_every_vector_file_is_loaded_by_a_test(name: str) -> None:
    assert f'"{name}"' in TEST_SOURCES


def test_a_file_without_a_source_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "anonymous.json").write_text('{"vectors": [{"name": "x"}]}', encoding="utf-8")
    (tmp_path / "empty.json").write_text('{"source": "RFC 0000", "vectors": []}', encoding="utf-8")
    monkeypatch.setattr("tests.secagg.kat.VECTORS_DIR", tmp_path)
    with pytest.raises(VectorFileError, match="does not name its source"):
        load_document("anonymous.json")
    with pytest.raises(VectorFileError, match="holds no vectors"):
        load_document("empty.json")
