"""What every round of a training must be, derived from the signed manifest alone.

The coordinator opens rounds with exactly these parameters (:mod:`clients.consortium`);
every bank refuses a round that differs (:meth:`TrainingRules.check_round`). Both read
them from the same manifest (:class:`secagg.consortium.Manifest`), whose schema and plan
this module interprets (the protocol core hashes them without reading them):

* **Steps.** Step 0 is the statistics round, only when the agreed schema carries no
  standardisation (means and scales); steps 1..R are the plan's R training rounds.
* **Cohort.** Every round's cohort is the manifest's banks in roster order, with their
  keys; the threshold is the manifest's rule for that cohort size; mode and graph are
  the manifest's.
* **Statistics round.** ``dim = 3 x (numeric columns)``, a 64-bit ring, no DP policy:
  an exact release of the consortium's column sums (:mod:`clients.training.tabular`).
* **Model.** A built-in model (the plan's ``model``), or a bank's own model: the plan's
  ``model`` is ``custom`` and the manifest's ``model`` member is its layout
  (:class:`dp.models.ModelLayout`: the factory, the ordered parameter names and shapes, their
  hash, the loss), read here without torch; its parameter count is the rounds' dimension.
* **Training round.** ``dim`` the model's parameter count (padded when participant-level
  noise rotates it), the plan's ring, and the declared privacy the plan prescribes for
  this cohort: :meth:`clients.training.plan.FederatedPlan.round_dim` and ``round_privacy``.

Torch-free: the coordinator and the auditor run it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

from clients.runtime.errors import ClientError
from clients.runtime.transport import RoundDescription
from clients.training.plan import STATISTICS_BITS, FederatedError, FederatedPlan, statistics_dim
from clients.training.tabular import TabularError, TabularSchema
from dp.models import ModelKind, ModelLayout, ModelSpec, ModelSpecError
from secagg.consortium import CohortMismatch, Manifest, ManifestError

STATISTICS_STEP = 0


class RefusalReason(str, Enum):
    """Why a bank refuses a round of its training. Stable strings (the bank's progress log)."""

    NOT_THIS_TRAINING = "not-this-training"
    MANIFEST_HASH_MISMATCH = "manifest-hash-mismatch"
    KEY_NOT_IN_MANIFEST = "cohort-not-in-manifest"
    COHORT_DIFFERS = "cohort-differs-from-manifest"
    PROTOCOL_DIFFERS = "protocol-differs-from-manifest"
    UNEXPECTED_STEP = "unexpected-step"
    DIMENSION_DIFFERS = "dimension-differs-from-plan"
    BITS_DIFFER = "bits-differ-from-plan"
    PRIVACY_DIFFERS = "privacy-differs-from-plan"
    POLICY = "policy-refused"
    NOT_OPEN = "round-not-open"


class RoundRefused(ClientError):
    """This bank does not take part in this round; nothing was trained, spent or sent for it."""

    def __init__(self, reason: RefusalReason, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason.value}: {detail}")


@dataclass(frozen=True, slots=True)
class StepParameters:
    """The round parameters of one step, as the coordinator creates them."""

    step: int
    dim: int
    bits: int
    privacy: list[dict[str, Any]]

    @property
    def is_statistics(self) -> bool:
        return self.step == STATISTICS_STEP


class TrainingRules:
    """The schema, the plan and the round parameters of every step of one manifest's training."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        try:
            self.schema = TabularSchema.from_dict(manifest.schema)
            self.plan = FederatedPlan.from_dict(manifest.plan)
        except (TabularError, FederatedError) as exc:
            raise ManifestError(f"the manifest's schema or plan is invalid: {exc}") from None
        self.model: ModelSpec | ModelLayout
        if self.plan.model is ModelKind.CUSTOM:
            if manifest.model is None:
                raise ManifestError("the plan's model is custom, but the manifest has no model (its layout)")
            try:
                self.model = ModelLayout.from_dict(manifest.model)
            except ModelSpecError as exc:
                raise ManifestError(f"the manifest's model is invalid: {exc}") from None
            if self.model.num_features != self.schema.num_features:
                raise ManifestError(
                    f"the manifest's model takes {self.model.num_features} features, the schema gives {self.schema.num_features}"
                )
            targets = {self.schema.positive, *(self.schema.negative or ())}
            if self.model.classes is not None and not set(self.model.classes) <= targets:
                raise ManifestError(
                    f"the model's classes {list(self.model.classes)} are not all target values of the schema ({sorted(targets)})"
                )
        elif manifest.model is not None:
            raise ManifestError(f"the manifest describes a model, but the plan's model is {self.plan.model.value}")
        else:
            self.model = self.plan.model_spec(self.schema.num_features)
        if self.plan.mode is not manifest.protocol.mode:
            raise ManifestError(
                f"the plan's mode {self.plan.mode.value} is not the manifest's protocol mode {manifest.protocol.mode.value}"
            )
        self.banks = manifest.banks
        self.threshold = manifest.protocol.threshold(len(self.banks))

    @property
    def needs_statistics(self) -> bool:
        return not self.schema.is_standardized

    @property
    def steps(self) -> tuple[int, ...]:
        """Every step of the training, in order."""
        first = (STATISTICS_STEP,) if self.needs_statistics else ()
        return first + tuple(range(1, self.plan.rounds + 1))

    @property
    def parameter_count(self) -> int:
        return self.model.parameter_count

    def step_parameters(self, step: int) -> StepParameters:
        if step not in self.steps:
            raise ManifestError(f"the training has no step {step} (steps {self.steps[0]}..{self.steps[-1]})")
        if step == STATISTICS_STEP:
            return StepParameters(step, statistics_dim(self.schema), STATISTICS_BITS, [])
        cohort = {"min_survivors": self.threshold, "max_clients": len(self.banks)}
        return StepParameters(
            step,
            self.plan.round_dim(self.parameter_count, **cohort),
            self.plan.ring_bits,
            self.plan.round_privacy(self.parameter_count, **cohort),
        )

    def round_request(self, step: int, *, deadlines: dict[str, float] | None = None, notes: str | None = None) -> dict[str, Any]:
        """The body of ``POST /v1/admin/rounds`` for ``step`` (docs/API.md section 4)."""
        parameters = self.step_parameters(step)
        protocol = self.manifest.protocol
        dp_policy: dict[str, Any] = {"privacy": parameters.privacy}
        if notes is not None:
            dp_policy["notes"] = notes
        body: dict[str, Any] = {
            "cohort": [bank.id for bank in self.banks],
            "threshold": self.threshold,
            "mode": protocol.mode.value,
            "graph": protocol.graph.value,
            "degree": protocol.degree,
            "dim": parameters.dim,
            "bits": parameters.bits,
            "dp_policy": dp_policy,
            "training": {"id": self.manifest.training_id, "round": step},
        }
        if deadlines:
            body["deadlines"] = dict(deadlines)
        return body

    def check_round(self, description: RoundDescription, *, step: int | None = None) -> StepParameters:
        """The parameters of the step this round is, or :class:`RoundRefused` naming the first difference.

        Checked in this order: the round belongs to this training and is bound to this
        manifest's hash; its cohort is the manifest's banks with their keys (a key the
        roster does not hold is named); mode, graph and threshold follow the manifest's
        rule; it is the step this bank expects (``step``, when given); its dimension, ring
        and declared privacy are the plan's for that step.
        """
        training = description.training
        manifest = self.manifest
        if training is None or training.training_id != manifest.training_id:
            declared = "no training" if training is None else f"training {training.training_id!r}"
            raise RoundRefused(
                RefusalReason.NOT_THIS_TRAINING, f"round {description.round_id} declares {declared}, not {manifest.training_id!r}"
            )
        if training.manifest_hash != manifest.hash:
            raise RoundRefused(
                RefusalReason.MANIFEST_HASH_MISMATCH,
                f"round {description.round_id} is bound to manifest {training.manifest_hash.hex()[:16]}…, "
                f"this bank signed {manifest.hash.hex()[:16]}…",
            )
        config = description.config
        try:
            manifest.check_cohort(description.member_ids or (), config.identity_keys)
            manifest.check_protocol(
                mode=config.mode,
                graph=config.graph,
                degree=config.degree,
                threshold=config.threshold,
                cohort_size=config.participant_count,
            )
        except CohortMismatch as mismatch:
            raise RoundRefused(RefusalReason(mismatch.reason.value), mismatch.detail) from None
        if training.step not in self.steps or (step is not None and training.step != step):
            expected = "" if step is None else f", this bank is at step {step}"
            raise RoundRefused(RefusalReason.UNEXPECTED_STEP, f"round {description.round_id} is step {training.step}{expected}")
        parameters = self.step_parameters(training.step)
        if config.dim != parameters.dim:
            raise RoundRefused(
                RefusalReason.DIMENSION_DIFFERS,
                f"round {description.round_id} has dim {config.dim}, step {training.step} of the plan needs {parameters.dim}",
            )
        if config.bits != parameters.bits:
            raise RoundRefused(
                RefusalReason.BITS_DIFFER, f"round {description.round_id} uses {config.bits} bits, the plan {parameters.bits}"
            )
        privacy: Any = (description.dp_policy or {}).get("privacy", [])
        if privacy != parameters.privacy:
            raise RoundRefused(
                RefusalReason.PRIVACY_DIFFERS,
                f"round {description.round_id} declares privacy {privacy}, the plan prescribes {parameters.privacy}",
            )
        return parameters
