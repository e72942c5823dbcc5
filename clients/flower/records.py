"""What this protocol's messages look like inside Flower messages: the one contract
between :mod:`clients.flower.mod` (the bank's side) and :mod:`clients.flower.workflow`
(the coordinator's side).

Every protocol message travels as one :class:`flwr.app.ConfigRecord` named
:data:`RECORD_KEY` in a Flower ``train`` message: ``stage`` (a stage name of
:mod:`secagg.rounds`, or ``"identify"``), ``round`` (the round id, hex) and ``payload``
(the core's binary encoding, :mod:`secagg.messages`, unchanged: nothing is re-encoded,
so the checks of the core apply to exactly the bytes that travelled). The R0 request
also carries ``setup``, the round's parameters as JSON (:class:`RoundSetup`), and the
strategy's ``FitIns`` in the rest of the content, exactly as Flower's own ``train``
message does.

A bank's refusal travels as a Flower error reply whose reason starts with
:data:`REFUSAL_PREFIX` followed by the refusal's stable name (an
:class:`~secagg.errors.AbortReason`, a
:class:`~clients.runtime.errors.PolicyViolationReason` or a
:class:`~clients.flower.errors.FlowerRefusalReason`), so the coordinator can log who
refused what without parsing free text.

Float updates become ring vectors by :class:`UpdateEncoding`: each coordinate is
clipped to [-clip, clip] (Flower's SecAgg+ clips the same way, its ``clipping_range``),
multiplied by the bank's weight r = num_examples / max_weight (in (0, 1]), and one
coordinate r * clip is appended, so the unmasked sum yields both sum(r_u x_u) and
sum(r_u) and hence the weighted average FedAvg wants, without any bank's
``num_examples`` leaving it in the clear. The vector is then encoded by the stochastic
fixed-point encoder of :mod:`secagg.encoding` at the round's ``scale`` (the finest that
cannot wrap for the cohort, :meth:`secagg.encoding.FixedPointEncoding.with_max_precision`):
every decoded coordinate of a sum of m inputs is within m / scale of the exact sum.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from clients.runtime.transport import RoundDescription
from secagg.config import RoundConfig
from secagg.encoding import FixedPointEncoding, Ring
from secagg.errors import ConfigurationError, EncodingError
from secagg.rounds import Round

RECORD_KEY = "secagg"
"""The name of the ConfigRecord that carries this protocol in a Flower message."""
IDENTIFY = "identify"
"""The stage in which a node names its participant id and identity key (no secrets)."""
SETUP_FORMAT = "secagg-flower-setup/1"
REFUSAL_PREFIX = "secagg-refused:"
MAX_SHAPE_ARRAYS = 4096


class MalformedRecord(ValueError):
    """A Flower message whose secagg record is missing or not of the expected form."""


def refusal_text(reason: str, detail: str) -> str:
    """The reason string of a bank's error reply: ``secagg-refused:<reason>: <detail>``."""
    return f"{REFUSAL_PREFIX}{reason}: {detail}"


def refusal_reason(text: str) -> str | None:
    """The stable refusal name in an error reply's reason, or None if it is not a refusal."""
    start = text.find(REFUSAL_PREFIX)
    if start < 0:
        return None
    rest = text[start + len(REFUSAL_PREFIX) :]
    return rest.split(":", 1)[0] or None


@dataclass(frozen=True, slots=True)
class VectorLayout:
    """The shapes and dtypes of the model's arrays, in order: how a list of arrays
    becomes one vector and back."""

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    def __post_init__(self) -> None:
        if len(self.shapes) != len(self.dtypes) or not self.shapes or len(self.shapes) > MAX_SHAPE_ARRAYS:
            raise MalformedRecord(f"a layout names 1..{MAX_SHAPE_ARRAYS} arrays, each with a shape and a dtype")
        for shape in self.shapes:
            if not all(isinstance(size, int) and not isinstance(size, bool) and size >= 0 for size in shape):
                raise MalformedRecord("array shapes are tuples of non-negative integers")
        for dtype in self.dtypes:
            if np.dtype(dtype).kind != "f":
                raise MalformedRecord(f"secure aggregation sums floating-point arrays, not {dtype}")

    @classmethod
    def of(cls, arrays: Sequence[np.ndarray]) -> VectorLayout:
        return cls(tuple(tuple(int(s) for s in a.shape) for a in arrays), tuple(np.dtype(a.dtype).str for a in arrays))

    @property
    def size(self) -> int:
        return sum(math.prod(shape) for shape in self.shapes)

    def matches(self, arrays: Sequence[np.ndarray]) -> bool:
        return len(arrays) == len(self.shapes) and all(
            tuple(a.shape) == shape for a, shape in zip(arrays, self.shapes, strict=True)
        )

    def flatten(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """One float64 vector of every array's values, in order (the caller checked :meth:`matches`)."""
        out = np.empty(self.size, dtype=np.float64)
        offset = 0
        for array in arrays:
            size = array.size
            out[offset : offset + size] = np.asarray(array, dtype=np.float64).reshape(-1)
            offset += size
        return out

    def unflatten(self, vector: np.ndarray) -> list[np.ndarray]:
        arrays = []
        offset = 0
        for shape, dtype in zip(self.shapes, self.dtypes, strict=True):
            size = math.prod(shape)
            arrays.append(vector[offset : offset + size].astype(np.dtype(dtype)).reshape(shape))
            offset += size
        return arrays

    def to_json(self) -> list[dict[str, Any]]:
        return [{"shape": list(shape), "dtype": dtype} for shape, dtype in zip(self.shapes, self.dtypes, strict=True)]

    @classmethod
    def from_json(cls, value: object) -> VectorLayout:
        if not isinstance(value, list):
            raise MalformedRecord("layout is a list of {shape, dtype}")
        try:
            return cls(
                tuple(tuple(item["shape"]) for item in value),
                tuple(str(item["dtype"]) for item in value),
            )
        except (KeyError, TypeError) as exc:
            raise MalformedRecord(f"layout entry is malformed: {exc}") from None


@dataclass(frozen=True, slots=True)
class UpdateEncoding:
    """Clip, weight and scale of the round's updates (see the module docstring)."""

    clip: float
    max_weight: float
    scale: float

    def __post_init__(self) -> None:
        for name in ("clip", "max_weight", "scale"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise MalformedRecord(f"{name} must be a positive finite number, got {value!r}")

    @classmethod
    def finest(cls, *, ring: Ring, clip: float, max_weight: float, cohort_size: int) -> UpdateEncoding:
        """The finest scale at which ``cohort_size`` inputs cannot wrap ``ring``."""
        return cls(clip, max_weight, FixedPointEncoding.with_max_precision(ring, clip, cohort_size).scale)

    def fixed_point(self, config: RoundConfig) -> FixedPointEncoding:
        """The fixed-point encoding for ``config``; refuses one whose sum could wrap."""
        return FixedPointEncoding(ring=config.ring, clip=self.clip, scale=self.scale, max_summands=config.participant_count)

    def weight_of(self, num_examples: int) -> float:
        """r = num_examples / max_weight; refuses a weight outside (0, 1]."""
        if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
            raise EncodingError(f"num_examples must be a positive integer, got {num_examples!r}")
        if num_examples > self.max_weight:
            raise EncodingError(f"num_examples {num_examples} exceeds the round's max_weight {self.max_weight:g}")
        return num_examples / self.max_weight

    def client_vector(self, values: np.ndarray, num_examples: int) -> tuple[np.ndarray, int]:
        """The bank's real vector [r * clip(x), r * clip] and how many coordinates were clipped."""
        weight = self.weight_of(num_examples)
        if not np.all(np.isfinite(values)):
            raise EncodingError("the update contains NaN or infinity")
        clipped = int(np.count_nonzero(np.abs(values) > self.clip))
        vector = np.empty(values.size + 1, dtype=np.float64)
        np.clip(values, -self.clip, self.clip, out=vector[:-1])
        vector[:-1] *= weight
        vector[-1] = weight * self.clip
        return vector, clipped

    def weighted_average(self, decoded_sum: np.ndarray) -> tuple[np.ndarray, float]:
        """From the decoded sum [sum r x, clip sum r]: the weighted average and sum(r) * max_weight."""
        total_weight = float(decoded_sum[-1]) / self.clip
        if not total_weight > 0:
            raise EncodingError("the aggregate weight is not positive")
        return decoded_sum[:-1] / total_weight, total_weight * self.max_weight

    def error_bound(self, summands: int) -> float:
        """Largest |decoded - exact| of any coordinate of a sum of ``summands`` inputs."""
        return summands / self.scale


@dataclass(frozen=True, slots=True)
class RoundSetup:
    """What the coordinator announces with R0: the round, its cohort, its declared
    privacy, the update encoding and the model's layout."""

    description: RoundDescription
    encoding: UpdateEncoding
    layout: VectorLayout

    def to_json(self) -> str:
        config = self.description.config
        members = self.description.member_ids or ()
        document = {
            "format": SETUP_FORMAT,
            "round_id": config.round_id.hex(),
            "cohort": [
                {"index": index, "id": member, "public_key": base64.b64encode(key).decode("ascii")}
                for index, (member, key) in enumerate(zip(members, config.identity_keys, strict=True))
            ],
            "threshold": config.threshold,
            "dim": config.dim,
            "bits": config.bits,
            "mode": config.mode.value,
            "graph": config.graph.value,
            "degree": config.degree,
            "config_digest": config.digest().hex(),
            "dp_policy": dict(self.description.dp_policy or {"privacy": []}),
            "encoding": {"clip": self.encoding.clip, "max_weight": self.encoding.max_weight, "scale": self.encoding.scale},
            "layout": self.layout.to_json(),
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> RoundSetup:
        """Parse and check the setup; raises :class:`MalformedRecord` naming what is wrong."""
        try:
            document = json.loads(text)
        except (json.JSONDecodeError, TypeError) as exc:
            raise MalformedRecord(f"the round setup is not JSON: {exc}") from None
        if not isinstance(document, dict) or document.get("format") != SETUP_FORMAT:
            raise MalformedRecord(f"the round setup is not a {SETUP_FORMAT} document")
        try:
            cohort = sorted(document["cohort"], key=lambda member: int(member["index"]))
            if [int(member["index"]) for member in cohort] != list(range(len(cohort))):
                raise ValueError("cohort indices are not 0..n-1")
            config = RoundConfig(
                round_id=bytes.fromhex(document["round_id"]),
                identity_keys=tuple(base64.b64decode(member["public_key"], validate=True) for member in cohort),
                threshold=int(document["threshold"]),
                dim=int(document["dim"]),
                bits=int(document["bits"]),
                mode=document["mode"],
                graph=document["graph"],
                degree=document.get("degree"),
            )
            members = tuple(str(member["id"]) for member in cohort)
            raw_encoding: Mapping[str, Any] = document["encoding"]
            encoding = UpdateEncoding(
                clip=raw_encoding["clip"], max_weight=raw_encoding["max_weight"], scale=raw_encoding["scale"]
            )
            layout = VectorLayout.from_json(document["layout"])
            dp_policy = document["dp_policy"]
            if not isinstance(dp_policy, dict):
                raise ValueError("dp_policy is not an object")
        except MalformedRecord:
            raise
        except (KeyError, TypeError, ValueError, binascii.Error, ConfigurationError) as exc:
            raise MalformedRecord(f"the round setup cannot be used: {exc}") from None
        if config.digest().hex() != document.get("config_digest"):
            raise MalformedRecord("the setup's config_digest does not match the parameters it carries")
        if len(set(members)) != len(members):
            raise MalformedRecord("the cohort names a participant twice")
        if config.dim != layout.size + 1:
            raise MalformedRecord(f"dim {config.dim} is not the layout's {layout.size} values plus the weight")
        description = RoundDescription(
            round_id=config.round_id.hex(),
            config=config,
            status=Round.ADVERTISE_KEYS.value,
            is_open=True,
            member_ids=members,
            dp_policy=dp_policy,
        )
        return cls(description=description, encoding=encoding, layout=layout)
