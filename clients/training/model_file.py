"""The trained model as a file: its parameters with everything needed to use it.

``model.json`` (format ``secagg-model/1``), written by ``secagg train`` (federated or
``--local``) and read by ``secagg predict`` and ``secagg evaluate``:

====================  ======================================================================
``format``            ``"secagg-model/1"``
``schema``            the standardised schema the model's features come from (the agreed
                      schema with the means and scales the training used)
``model``             the model specification: ``kind``, ``num_features``, ``hidden_units``
``parameters``        the flat parameters (PyTorch ``parameters()`` order, :mod:`dp.models`)
``parameters_sha256`` SHA-256 of the parameters as little-endian float32: the hash every bank
                      of a training reports for the same global model
``threshold``         the decision threshold on the predicted probability, chosen on
                      validation data by Youden's J (:func:`clients.training.metrics.youden_threshold`)
``threshold_source``  what it was chosen on (the bank's own training rows, or a file given
                      to ``secagg evaluate --validation``)
``training_id``,      the consortium training and the hash of its signed manifest (``null``
``manifest_hash``     for a ``--local`` model), and how many rounds made the model
``rounds``
====================  ======================================================================

A file whose parameters do not match their hash or the specification's size is refused.
Scoring is numpy only (:func:`clients.training.plan.predict_logits`): no torch.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clients.training.metrics import youden_threshold
from clients.training.plan import predict_logits
from clients.training.tabular import Dataset, TabularError, TabularSchema
from dp.atomic_files import PUBLIC_MODE, write_atomic
from dp.models import ModelKind, ModelSpec

MODEL_FORMAT = "secagg-model/1"


class ModelFileError(TabularError):
    """A model file that is malformed, or whose parameters do not match their hash or specification."""


def parameters_sha256(parameters: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(parameters, dtype="<f4").tobytes()).hexdigest()


def probabilities(spec: ModelSpec, parameters: np.ndarray, features: np.ndarray) -> np.ndarray:
    logits = predict_logits(spec, parameters, features)
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -50.0, 50.0)))


@dataclass(frozen=True)
class ModelArtefact:
    schema: TabularSchema
    spec: ModelSpec
    parameters: np.ndarray
    threshold: float
    threshold_source: str
    training_id: str | None
    manifest_hash: str | None
    rounds: int

    def __post_init__(self) -> None:
        parameters = np.asarray(self.parameters, dtype=np.float32)
        if parameters.shape != (self.spec.parameter_count,) or not np.all(np.isfinite(parameters)):
            raise ModelFileError(f"a {self.spec.kind.value} model of {self.spec.num_features} features has "
                                 f"{self.spec.parameter_count} finite parameters, got shape {parameters.shape}")  # fmt: skip
        if self.spec.num_features != self.schema.num_features:
            raise ModelFileError(
                f"the model takes {self.spec.num_features} features, its schema gives {self.schema.num_features}"
            )
        if not self.schema.is_standardized:
            raise ModelFileError("a model's schema carries the means and scales it was trained with")
        if not (isinstance(self.threshold, float) and math.isfinite(self.threshold)):
            raise ModelFileError("the threshold must be a finite number")
        object.__setattr__(self, "parameters", parameters)

    @classmethod
    def trained(
        cls,
        *,
        schema: TabularSchema,
        spec: ModelSpec,
        parameters: np.ndarray,
        training_id: str | None,
        manifest_hash: str | None,
        rounds: int,
        threshold_data: Dataset,
        threshold_source: str = "this bank's own training rows",
    ) -> ModelArtefact:
        """The model with its threshold chosen on ``threshold_data`` (0.5 if it holds one class only)."""
        labels = threshold_data.labels
        threshold = 0.5
        if 0 < float(labels.sum()) < labels.size:
            threshold = youden_threshold(labels, probabilities(spec, parameters, threshold_data.features))
        return cls(schema, spec, parameters, float(threshold), threshold_source, training_id, manifest_hash, rounds)

    def with_threshold(self, threshold: float, source: str) -> ModelArtefact:
        return ModelArtefact(
            self.schema, self.spec, self.parameters, float(threshold), source, self.training_id, self.manifest_hash, self.rounds
        )

    def predict(self, features: np.ndarray) -> np.ndarray:
        return probabilities(self.spec, self.parameters, features)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "schema": self.schema.to_dict(),
            "model": {
                "kind": self.spec.kind.value,
                "num_features": self.spec.num_features,
                "hidden_units": self.spec.hidden_units,
            },
            "parameters": [float(value) for value in self.parameters.tolist()],
            "parameters_sha256": parameters_sha256(self.parameters),
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "training_id": self.training_id,
            "manifest_hash": self.manifest_hash,
            "rounds": self.rounds,
        }

    def save(self, path: Path) -> None:
        write_atomic(path, (json.dumps(self.to_dict(), indent=1, sort_keys=True) + "\n").encode("ascii"), mode=PUBLIC_MODE)

    @classmethod
    def load(cls, path: Path) -> ModelArtefact:
        try:
            value = json.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ModelFileError(f"cannot read the model {path}: {exc.strerror}") from None
        except json.JSONDecodeError as exc:
            raise ModelFileError(f"{path} is not JSON: {exc}") from None
        expected = {
            "format", "schema", "model", "parameters", "parameters_sha256", "threshold", "threshold_source",
            "training_id", "manifest_hash", "rounds",
        }  # fmt: skip
        if not isinstance(value, dict) or value.get("format") != MODEL_FORMAT or set(value) != expected:
            raise ModelFileError(f"{path} is not a {MODEL_FORMAT} file")
        try:
            model = value["model"]
            spec = ModelSpec(ModelKind(model["kind"]), int(model["num_features"]), int(model["hidden_units"]))
            parameters = np.asarray(value["parameters"], dtype=np.float32)
            artefact = cls(
                schema=TabularSchema.from_dict(value["schema"]),
                spec=spec,
                parameters=parameters,
                threshold=float(value["threshold"]),
                threshold_source=str(value["threshold_source"]),
                training_id=value["training_id"],
                manifest_hash=value["manifest_hash"],
                rounds=int(value["rounds"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, TabularError):
                raise
            raise ModelFileError(f"{path}: {exc}") from None
        if parameters_sha256(artefact.parameters) != value["parameters_sha256"]:
            raise ModelFileError(f"{path}: the parameters do not match parameters_sha256")
        return artefact
