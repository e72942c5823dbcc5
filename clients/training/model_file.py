"""The trained model as a file: its parameters with everything needed to use it.

``model.json`` (format ``secagg-model/1``), written by ``secagg train`` (federated or
``--local``) and read by ``secagg predict`` and ``secagg evaluate``:

====================  ======================================================================
``format``            ``"secagg-model/1"``
``schema``            the standardised schema the model's features come from (the agreed
                      schema with the means and scales the training used)
``model``             the model specification: ``kind``, ``num_features``, ``hidden_units`` for
                      a built-in model; ``{"kind": "custom", "layout": L}`` for a bank's own
                      model, ``L`` the manifest's layout (``secagg-model-layout/1``: the
                      factory, the parameter names and shapes, ``shapes_sha256``, the loss)
``parameters``        the flat parameters (PyTorch ``parameters()`` order, :mod:`dp.models`)
``parameters_sha256`` SHA-256 of the parameters as little-endian float32: the hash every bank
                      of a training reports for the same global model
``threshold``         binary models: the decision threshold on the predicted probability,
                      chosen on validation data by Youden's J
                      (:func:`clients.training.metrics.youden_threshold`); ``null`` otherwise
``threshold_source``  what it was chosen on (the bank's own training rows, or a file given
                      to ``secagg evaluate --validation``); ``null`` when there is no threshold
``training_id``,      the consortium training and the hash of its signed manifest (``null``
``manifest_hash``     for a ``--local`` model), and how many rounds made the model
``rounds``
====================  ======================================================================

A file whose parameters do not match their hash or the specification's size is refused.
The built-in models are scored in numpy (:func:`clients.training.plan.predict_logits`): no
torch. A bank's own model is scored by its factory's module: loading the file imports the
factory (the bank's own code) and refuses it unless its parameter names and shapes are the
file's layout (the same check as before training).
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
from clients.training.plan import model_outputs
from clients.training.tabular import Dataset, TabularError, TabularSchema
from dp.atomic_files import PUBLIC_MODE, write_atomic
from dp.models import LossKind, ModelKind, ModelLayout, ModelSpec, loss_of

MODEL_FORMAT = "secagg-model/1"


class ModelFileError(TabularError):
    """A model file that is malformed, or whose parameters do not match their hash or specification."""


def parameters_sha256(parameters: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(parameters, dtype="<f4").tobytes()).hexdigest()


def probabilities(spec: ModelSpec | ModelLayout, parameters: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Binary: P(positive) per row; multi-class: N x classes softmax probabilities; regression: the predictions."""
    outputs = model_outputs(spec, parameters, features)
    loss = loss_of(spec)
    if loss is LossKind.MEAN_SQUARED_ERROR:
        return outputs
    if loss is LossKind.CROSS_ENTROPY:
        shifted = np.exp(outputs - outputs.max(axis=1, keepdims=True))
        return shifted / shifted.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-np.clip(outputs, -50.0, 50.0)))


@dataclass(frozen=True)
class ModelArtefact:
    """A trained model with its schema; binary models carry their decision threshold (else ``None``)."""

    schema: TabularSchema
    spec: ModelSpec | ModelLayout
    parameters: np.ndarray
    threshold: float | None
    threshold_source: str | None
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
        if self.binary and not (isinstance(self.threshold, float) and math.isfinite(self.threshold)):
            raise ModelFileError("the threshold must be a finite number")
        if not self.binary and self.threshold is not None:
            raise ModelFileError("only a binary model has a decision threshold")
        object.__setattr__(self, "parameters", parameters)

    @property
    def loss(self) -> LossKind:
        return loss_of(self.spec)

    @property
    def binary(self) -> bool:
        return self.loss is LossKind.BINARY_CROSS_ENTROPY

    @classmethod
    def trained(
        cls,
        *,
        schema: TabularSchema,
        spec: ModelSpec | ModelLayout,
        parameters: np.ndarray,
        training_id: str | None,
        manifest_hash: str | None,
        rounds: int,
        threshold_data: Dataset,
        threshold_source: str = "this bank's own training rows",
    ) -> ModelArtefact:
        """The model with its threshold chosen on ``threshold_data`` (0.5 if it holds one class only; none unless binary)."""
        if loss_of(spec) is not LossKind.BINARY_CROSS_ENTROPY:
            return cls(schema, spec, parameters, None, None, training_id, manifest_hash, rounds)
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
        """:func:`probabilities` of the model on a tabular feature matrix."""
        return probabilities(self.spec, self.parameters, features)

    def scores(self, features: np.ndarray) -> tuple[list[str], list[list[Any]]]:
        """The columns ``secagg predict`` writes for each row, after ``row``: binary ``probability, predicted``
        (1/0 at the threshold); multi-class ``probability, predicted`` (the most probable class and its
        probability); regression ``predicted``."""
        predicted = self.predict(features)
        if self.loss is LossKind.MEAN_SQUARED_ERROR:
            return ["predicted"], [[repr(float(value))] for value in predicted.tolist()]
        if self.loss is LossKind.CROSS_ENTROPY:
            assert isinstance(self.spec, ModelLayout) and self.spec.classes is not None
            best = np.argmax(predicted, axis=1)
            chosen = predicted[np.arange(best.size), best]
            classes = self.spec.classes
            return ["probability", "predicted"], [[repr(float(p)), classes[int(c)]] for p, c in zip(chosen, best, strict=True)]
        assert self.threshold is not None
        return ["probability", "predicted"], [[repr(float(p)), 1 if p >= self.threshold else 0] for p in predicted.tolist()]

    def evaluate(self, features: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
        """The figures ``secagg evaluate`` reports, by task (labels as :func:`clients.training.plan.labels_for` gives them).

        Binary: ``auc``, and ``accuracy`` and ``balanced_accuracy`` at the model's threshold;
        multi-class: ``accuracy``, ``balanced_accuracy`` (mean per-class recall) and ``log_loss``;
        regression: ``rmse``, ``mae`` and ``r2``. Always ``task`` and ``rows``.
        """
        from clients.training.metrics import (
            accuracy,
            balanced_accuracy,
            log_loss,
            multiclass_accuracy,
            multiclass_balanced_accuracy,
            regression_errors,
            roc_auc,
        )

        predicted = self.predict(features)
        figures: dict[str, Any] = {"task": self.loss.value, "rows": int(labels.size)}
        if self.loss is LossKind.MEAN_SQUARED_ERROR:
            figures.update(regression_errors(labels, predicted))
        elif self.loss is LossKind.CROSS_ENTROPY:
            figures["accuracy"] = multiclass_accuracy(labels, predicted)
            figures["balanced_accuracy"] = multiclass_balanced_accuracy(labels, predicted)
            figures["log_loss"] = log_loss(labels, predicted)
        else:
            assert self.threshold is not None
            figures.update({
                "auc": roc_auc(labels, predicted),
                "accuracy": accuracy(labels, predicted, self.threshold),
                "balanced_accuracy": balanced_accuracy(labels, predicted, self.threshold),
                "threshold": self.threshold,
                "threshold_source": self.threshold_source,
                "positives": int(labels.sum()),
            })  # fmt: skip
        return figures

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": MODEL_FORMAT,
            "schema": self.schema.to_dict(),
            "model": self._model_member(),
            "parameters": [float(value) for value in self.parameters.tolist()],
            "parameters_sha256": parameters_sha256(self.parameters),
            "threshold": self.threshold,
            "threshold_source": self.threshold_source,
            "training_id": self.training_id,
            "manifest_hash": self.manifest_hash,
            "rounds": self.rounds,
        }

    def _model_member(self) -> dict[str, Any]:
        if isinstance(self.spec, ModelLayout):
            return {"kind": ModelKind.CUSTOM.value, "layout": self.spec.to_dict()}
        return {"kind": self.spec.kind.value, "num_features": self.spec.num_features, "hidden_units": self.spec.hidden_units}

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
            spec: ModelSpec | ModelLayout
            if model["kind"] == ModelKind.CUSTOM.value:
                if set(model) != {"kind", "layout"}:
                    raise ModelFileError(f"{path}: a custom model is exactly {{kind, layout}}")
                spec = ModelLayout.from_dict(model["layout"])
            else:
                spec = ModelSpec(ModelKind(model["kind"]), int(model["num_features"]), int(model["hidden_units"]))
            parameters = np.asarray(value["parameters"], dtype=np.float32)
            artefact = cls(
                schema=TabularSchema.from_dict(value["schema"]),
                spec=spec,
                parameters=parameters,
                threshold=None if value["threshold"] is None else float(value["threshold"]),
                threshold_source=None if value["threshold_source"] is None else str(value["threshold_source"]),
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
        if isinstance(spec, ModelLayout):
            _check_factory(path, spec)
        return artefact


def _check_factory(path: Path, layout: ModelLayout) -> None:
    """Refuse a file whose factory, on this machine, builds another module than the file's layout."""
    from dp.training import ModelDiffers, ModelRefused, define_checked_model

    try:
        define_checked_model(layout)
    except (ModelDiffers, ModelRefused) as refused:
        raise ModelFileError(f"{path}: {refused}") from None
