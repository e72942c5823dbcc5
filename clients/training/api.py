"""The Python API of a bank's federated training: what ``secagg train`` runs, for notebooks and pipelines.

::

    from clients.training import api

    manifest = api.load_manifest("manifest.json")          # refused unless every member signed it
    key = api.load_key("bank-a.key", passphrase="...")     # secagg client keygen's file
    data = api.load_data("loans.csv")
    result = api.train(
        manifest=manifest, key=key, data=data, server="https://secagg.example",
        policy="policy.toml", work_dir="bank-a/",
        on_round=lambda progress: print(f"round {progress.round}/{progress.of}: epsilon {progress.epsilon:.3f}"),
    )
    result.model.predict(features)      # the trained model (clients.training.model_file.ModelArtefact)
    result.epsilon, result.delta        # the example-level privacy this bank spent

**Same guarantees as the CLI.** ``secagg train --manifest`` is a thin layer over
:func:`train`, and :func:`train` over :func:`clients.training.federated.train_federated`:
the same checks before anything is sent (a complete manifest listing this key as a bank;
the bank's policy; its budget over the plan's remaining rounds; its data's target; for a
bank's own model, its factory's module against the manifest's layout), the same refusals of
rounds that differ from the manifest, the same charging of the signed privacy ledger at the
point of release, the same work directory (a second call with the same directory resumes).
Errors are the CLI's, as exceptions: :class:`~clients.runtime.errors.ClientError` subclasses
carry the CLI's exit code in ``exit_code`` (:func:`clients.training.federated.exit_code_of`
maps any of them); nothing here catches and hides one.

**Progress.** ``on_round`` is called once per completed step, in order, with a
:class:`RoundProgress` (the statistics round too, ``kind == "statistics"``), after the
step's result is applied and recorded in the work directory; ``on_event`` sees every
progress-log event (the CLI prints them). Both run on the training's thread: an exception
they raise stops the training as a crash would (the work directory resumes it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clients.training.federated import MODEL_ARTEFACT, BankJob, load_signed_manifest, train_federated
from clients.training.model_file import ModelArtefact
from clients.training.tabular import RawTable, read_csv
from secagg.consortium import SignedManifest
from secagg.hazmat.keys import SigningKey

__all__ = ["RoundProgress", "TrainingResult", "load_data", "load_key", "load_manifest", "train"]


@dataclass(frozen=True)
class RoundProgress:
    """One completed step of the training, as this bank applied it.

    ``kind`` is ``"statistics"`` (step 0, the exact column sums) or ``"round"`` (training
    round ``round`` of ``of``); ``survivors`` the banks in the sum; ``contributed`` whether
    this bank's input is among them; ``epsilon`` the example-level epsilon this bank has spent
    on these customers so far (at ``delta``); ``model_sha256`` the global model after the step.
    """

    kind: str
    round: int
    of: int
    round_id: str
    survivors: int
    contributed: bool
    epsilon: float
    delta: float
    model_sha256: str | None


@dataclass(frozen=True)
class TrainingResult:
    """What a completed training leaves this bank: the model, what it spent, and where its records are.

    ``summary`` is the object ``secagg train --json`` prints (the same keys).
    """

    model: ModelArtefact
    model_path: Path
    epsilon: float
    delta: float
    participant_epsilon: float | None
    rounds_completed: int
    ledger: Path
    summary: dict[str, Any]


def load_manifest(path: str | Path) -> SignedManifest:
    """The signed manifest at ``path``; :class:`secagg.consortium.ManifestError` unless every member signed it."""
    return load_signed_manifest(Path(path))


def load_key(path: str | Path, *, passphrase: str | bytes | None = None) -> SigningKey:
    """A bank's identity key (``secagg client keygen``'s PKCS #8 file, encrypted when a passphrase is given)."""
    from clients.runtime.keyfile import load_identity_key

    secret = passphrase.encode("utf-8") if isinstance(passphrase, str) else passphrase
    return load_identity_key(Path(path), passphrase=secret)


def load_data(path: str | Path) -> RawTable:
    """A bank's CSV (``.csv`` or ``.csv.gz``, a header row), as ``secagg train --data`` reads it."""
    return read_csv(Path(path))


def train(
    *,
    manifest: SignedManifest | str | Path,
    key: SigningKey | str | Path,
    data: RawTable | str | Path,
    server: str,
    policy: str | Path,
    work_dir: str | Path,
    passphrase: str | bytes | None = None,
    participant_id: str | None = None,
    ca_bundle: str | Path | None = None,
    target: str | None = None,
    positive: str | None = None,
    round_timeout: float = 600.0,
    server_timeout: float = 30.0,
    on_round: Callable[[RoundProgress], None] | None = None,
    on_event: Callable[[str, dict[str, Any]], None] | None = None,
) -> TrainingResult:
    """Take part in the manifest's training until its last round, and return the model and the privacy spent.

    ``manifest``, ``key`` and ``data`` are loaded objects (:func:`load_manifest`,
    :func:`load_key`, :func:`load_data`) or paths (``passphrase`` then opens the key).
    ``policy`` is the bank's policy file with its ``[budget]`` (docs/CLIENT.md section 2);
    ``work_dir`` keeps the training's state, so calling :func:`train` again after a crash
    resumes it. ``target`` and ``positive``, when given, must be the agreed schema's (a check
    that the bank means the training it joins). ``round_timeout`` bounds the wait for each
    step's round, ``server_timeout`` the time the server may stay unreachable. See the
    module docstring for the guarantees and the callbacks.
    """
    signed = manifest if isinstance(manifest, SignedManifest) else load_manifest(manifest)
    signed.require_complete()
    identity = key if isinstance(key, SigningKey) else load_key(key, passphrase=passphrase)
    table = data if isinstance(data, RawTable) else load_data(data)
    job = BankJob(
        data=Path(data) if isinstance(data, (str, Path)) else Path("<memory>"),
        manifest=Path(manifest) if isinstance(manifest, (str, Path)) else Path("<memory>"),
        work_dir=Path(work_dir),
        server=server,
        key=Path(key) if isinstance(key, (str, Path)) else Path("<memory>"),
        policy=Path(policy),
        participant_id=participant_id,
        ca_bundle=None if ca_bundle is None else Path(ca_bundle),
        target=target,
        positive=positive,
        round_timeout=round_timeout,
        server_timeout=server_timeout,
    )

    def forward(event: str, fields: dict[str, Any]) -> None:
        if on_event is not None:
            on_event(event, fields)
        if on_round is not None and event in ("round", "statistics"):
            on_round(
                RoundProgress(
                    kind=event,
                    round=int(fields["round"]),
                    of=int(fields["of"]),
                    round_id=str(fields["round_id"]),
                    survivors=int(fields["survivors"]),
                    contributed=bool(fields["contributed"]),
                    epsilon=float(fields["epsilon"]),
                    delta=float(fields["delta"]),
                    model_sha256=fields.get("model_sha256"),
                )
            )

    summary = train_federated(job, identity=identity, data=table, signed=signed, on_event=forward)
    model_path = Path(work_dir) / MODEL_ARTEFACT
    return TrainingResult(
        model=ModelArtefact.load(model_path),
        model_path=model_path,
        epsilon=float(summary["epsilon"]),
        delta=float(summary["delta"]),
        participant_epsilon=summary["participant_epsilon"],
        rounds_completed=int(summary["rounds_completed"]),
        ledger=Path(summary["ledger"]),
        summary=summary,
    )
