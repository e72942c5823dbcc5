"""The roster is written from the public-key files ``secagg client keygen`` writes, as they are."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.flower.conftest import FLOWER_MISSING

pytest.importorskip("flwr", reason=FLOWER_MISSING)

from clients.flower import Roster, RosterError
from clients.runtime.keyfile import generate_key_file, load_public_key_file


def test_a_roster_holding_the_contents_of_each_bank_s_pub_file_admits_exactly_those_keys(tmp_path: Path) -> None:
    keys = {bank: generate_key_file(tmp_path / f"{bank}.key") for bank in ("bank-a", "bank-b")}
    document = {
        "format": "secagg-roster/1",
        "participants": {bank: key.public_key_path.read_text(encoding="ascii") for bank, key in keys.items()},
    }
    (tmp_path / "roster.json").write_text(json.dumps(document), encoding="utf-8")
    roster = Roster.load(tmp_path / "roster.json")
    key_a = load_public_key_file(keys["bank-a"].public_key_path)
    assert roster.admits("bank-a", key_a) and not roster.admits("bank-b", key_a)
    roster.save(tmp_path / "again.json")
    assert Roster.load(tmp_path / "again.json") == roster


@pytest.mark.parametrize("key", ["00" * 31, "zz" * 32, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", 7])
def test_a_roster_key_that_is_not_64_hex_digits_is_refused_by_participant(key: object) -> None:
    with pytest.raises(RosterError, match="'bank-a'"):
        Roster.from_dict({"format": "secagg-roster/1", "participants": {"bank-a": key}})
