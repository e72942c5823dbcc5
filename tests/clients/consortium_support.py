"""Building consortia for the tests: keys, bank files, a signed manifest, policies; banks and coordinators in threads.

The banks run :func:`clients.training.federated.train_federated` (what ``secagg train``
runs) and the coordinator :func:`clients.consortium.coordinator.run_training` (what
``secagg consortium run`` runs), in threads of the test process against a real server
subprocess, so that torch is loaded once.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clients.consortium.admin import AdminClient
from clients.consortium.coordinator import run_training
from clients.harness.local_server import LocalServer
from clients.training.datasets import lending_club_schema, load_lending_club, split_regions
from clients.training.federated import BankJob, train_federated
from clients.training.plan import FederatedPlan
from clients.training.tabular import RawTable, TabularSchema, moment_sums, statistics_from_sums
from secagg.consortium import Manifest, Member, MemberRole, ProtocolRule, SignedManifest
from secagg.hazmat.keys import SigningKey
from secagg.hazmat.randomness import DeterministicRandom

SMALL_PLAN = FederatedPlan(rounds=2, sample_rate=0.25, target_epsilon=1.0)
"""Two rounds of four DP-SGD steps: enough to exercise everything, quick on small files."""
FAST_DEADLINES = {"R0": 60.0, "R1": 20.0, "R2": 20.0, "R3": 20.0, "R4": 20.0}

_TABLE: RawTable | None = None


def lending_club() -> RawTable:
    global _TABLE
    if _TABLE is None:
        _TABLE = load_lending_club()
    return _TABLE


def bank_tables(fraction: float = 0.12) -> dict[str, RawTable]:
    """Three banks' loans (a stratified share of each region group)."""
    return dict(split_regions(lending_club(), banks=3, keep_fraction=fraction).banks)


def standardized_schema() -> TabularSchema:
    """The shipped schema with means and scales agreed up front (no statistics round)."""
    schema = lending_club_schema()
    return schema.with_statistics(statistics_from_sums(schema, moment_sums(lending_club(), schema)))


def key_of(name: str) -> SigningKey:
    return SigningKey.generate(DeterministicRandom(name.encode().ljust(32, b"\0")[:32]))


def build_manifest(
    training_id: str,
    banks: list[str],
    *,
    schema: TabularSchema | dict[str, Any],
    plan: FederatedPlan | dict[str, Any] = SMALL_PLAN,
    auditors: tuple[str, ...] = ("auditor",),
    sign: bool = True,
    model: dict[str, Any] | None = None,
) -> SignedManifest:
    members = [Member(bank, MemberRole.BANK, key_of(bank).public_bytes) for bank in banks]
    members += [Member(name, MemberRole.AUDITOR, key_of(name).public_bytes) for name in auditors]
    plan_dict = plan.to_dict() if isinstance(plan, FederatedPlan) else plan
    schema_dict = schema.to_dict() if isinstance(schema, TabularSchema) else schema
    manifest = Manifest(training_id, tuple(members), ProtocolRule(plan_dict["mode"]), schema_dict, plan_dict, model)
    signed = SignedManifest(manifest)
    if sign:
        for member in members:
            signed = signed.with_signature(key_of(member.id))
    return signed


def write_policy(directory: Path, *, budget: float, delta: float = 1e-5, state_dir: Path | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "policy.toml"
    state = state_dir if state_dir is not None else directory / "budget"
    path.write_text(
        'min_cohort_size = 3\nrequired_mode = "active"\n[dp]\nrequired = true\nallow_exact_statistics = true\n'
        f'[budget]\nstate_dir = "{state}"\n[budget.example]\nmax_epsilon = {budget!r}\ndelta = {delta!r}\n'
    )
    return path


@dataclass
class BankRun:
    """One bank thread: its job, and what ``train_federated`` returned or raised."""

    name: str
    job: BankJob
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def start(self, **keywords: Any) -> BankRun:
        def target() -> None:
            try:
                self.result = train_federated(self.job, identity=key_of(self.name), **keywords)
            except BaseException as error:  # reported to the test
                self.error = error

        self.thread = threading.Thread(target=target, name=f"bank-{self.name}", daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float = 300.0) -> BankRun:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.name} did not finish"
        return self


def bank_job(
    root: Path, server: LocalServer | str, name: str, table: RawTable, manifest_path: Path, *, budget: float, **changes: Any
) -> BankJob:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "loans.csv"
    data.write_bytes(table.to_csv_bytes())
    values: dict[str, Any] = {
        "data": data,
        "manifest": manifest_path,
        "work_dir": directory / "work",
        "server": server if isinstance(server, str) else server.base_url,
        "key": directory / "unused.key",
        "policy": write_policy(directory, budget=budget),
        "round_timeout": 120.0,
        "server_timeout": 30.0,
    }
    values.update(changes)
    return BankJob(**values)


@dataclass
class CoordinatorRun:
    signed: SignedManifest
    server: LocalServer
    deadlines: dict[str, float] = field(default_factory=lambda: dict(FAST_DEADLINES))
    max_attempts: int = 3
    result: dict[str, Any] | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> CoordinatorRun:
        def target() -> None:
            try:
                with AdminClient(self.server.base_url, self.server.admin_token, unavailable_timeout=10.0) as admin:
                    self.result = run_training(admin, self.signed, deadlines=self.deadlines, max_attempts=self.max_attempts)
            except BaseException as error:
                self.error = error

        self.thread = threading.Thread(target=target, name=f"coordinator-{self.signed.manifest.training_id}", daemon=True)
        self.thread.start()
        return self

    def join(self, timeout: float = 300.0) -> CoordinatorRun:
        assert self.thread is not None
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the coordinator did not finish"
        return self


def shuffled(table: RawTable, seed: int = 1) -> RawTable:
    keys = np.empty(table.rows, dtype=np.uint64)
    DeterministicRandom.from_int(seed).fill(keys)
    return table.take(np.argsort(keys))


def write_key_file(path: Path, key: SigningKey, passphrase: bytes) -> Path:
    """``key`` as ``secagg client keygen`` would have written it (encrypted PKCS #8 PEM, mode 0600)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import BestAvailableEncryption, Encoding, PrivateFormat

    from dp.atomic_files import write_private_file

    pem = Ed25519PrivateKey.from_private_bytes(key.private_bytes).private_bytes(
        Encoding.PEM, PrivateFormat.PKCS8, BestAvailableEncryption(passphrase)
    )
    write_private_file(path, pem, overwrite=True)
    return path
