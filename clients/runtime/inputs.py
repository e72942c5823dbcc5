"""What a bank contributes to a round: a ring vector, or a real vector to encode.

Two forms, chosen explicitly by the caller:

* :class:`RingVectorInput` — already an element of Z_2^b^dim, e.g. the output of the
  distributed-DP pipeline (:func:`dp.mechanisms.distributed.encode_update`). Its dtype must be
  the round ring's container (uint32 for b = 32, ...), checked against the round.
* :class:`RealVectorInput` — float values with |x| <= ``clip``, encoded by the
  stochastic fixed-point encoder of :mod:`secagg.encoding` once the round's ring and
  cohort size are known. The rounding randomness comes from a seed kept in the round
  state file, so a resumed round re-encodes to exactly the same ring vector.

``.npy`` files are read with ``allow_pickle=False``: an input file can never execute
code. The input's fingerprint (:meth:`digest`) binds dtype, shape, bytes and the
encoding options; the state file uses it to refuse resuming with a changed input.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clients.runtime.errors import InputFileError
from secagg.config import RoundConfig
from secagg.encoding import FixedPointEncoding
from secagg.errors import EncodingError
from secagg.hazmat.randomness import RandomSource


def _vector_digest(label: bytes, vector: np.ndarray, extra: bytes = b"") -> bytes:
    hasher = hashlib.sha256(b"secagg/client-input/" + label + b"/")
    hasher.update(vector.dtype.str.encode("ascii") + struct.pack(">Q", vector.size) + extra)
    hasher.update(np.ascontiguousarray(vector).data.cast("B"))
    return hasher.digest()


@dataclass(frozen=True, slots=True)
class RingVectorInput:
    """A vector already in the ring (unsigned container dtype, every element < 2^bits)."""

    vector: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        vector = np.asarray(self.vector)
        if vector.ndim != 1:
            raise InputFileError(f"the input must be a 1-D vector, got shape {vector.shape}")
        if vector.dtype.kind != "u":
            raise InputFileError(f"a ring input must have an unsigned integer dtype, got {vector.dtype}")
        frozen = vector.astype(vector.dtype.newbyteorder("="), copy=True)
        frozen.setflags(write=False)
        object.__setattr__(self, "vector", frozen)

    def digest(self) -> bytes:
        return _vector_digest(b"ring", self.vector)

    def encode(self, config: RoundConfig, source: RandomSource) -> np.ndarray:
        del source  # already encoded: no randomness needed
        ring = config.ring
        if self.vector.size != config.dim:
            raise InputFileError(f"the input has {self.vector.size} elements, the round's dim is {config.dim}")
        if self.vector.dtype != ring.dtype.newbyteorder("="):
            raise InputFileError(
                f"the input has dtype {self.vector.dtype}; a {ring.bits}-bit ring needs {ring.dtype.newbyteorder('=')}"
            )
        if not ring.is_reduced(self.vector):
            raise InputFileError(f"the input has elements outside Z_2^{ring.bits}")
        return self.vector


@dataclass(frozen=True, slots=True)
class RealVectorInput:
    """Float values with |x| <= ``clip``, encoded at ``scale`` (default: the finest that cannot wrap for the cohort)."""

    vector: np.ndarray = field(repr=False)
    clip: float
    scale: float | None = None

    def __post_init__(self) -> None:
        vector = np.asarray(self.vector)
        if vector.ndim != 1 or vector.dtype.kind != "f":
            raise InputFileError(f"a real input must be a 1-D floating-point vector, got {vector.dtype} {vector.shape}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise InputFileError("clip must be a positive finite number")
        if self.scale is not None and not (math.isfinite(self.scale) and self.scale > 0):
            raise InputFileError("scale must be a positive finite number")
        if not np.all(np.isfinite(vector)):
            raise InputFileError("the input contains NaN or infinity")
        if vector.size and float(np.max(np.abs(vector))) > self.clip:
            raise InputFileError(f"the input has a coordinate with |x| > clip = {self.clip}; clip it first")
        frozen = vector.astype(np.float64, copy=True)
        frozen.setflags(write=False)
        object.__setattr__(self, "vector", frozen)

    def digest(self) -> bytes:
        return _vector_digest(b"real", self.vector, struct.pack(">dd", self.clip, self.scale or 0.0))

    def encoding_for(self, config: RoundConfig) -> FixedPointEncoding:
        try:
            if self.scale is None:
                return FixedPointEncoding.with_max_precision(config.ring, self.clip, config.participant_count)
            return FixedPointEncoding(ring=config.ring, clip=self.clip, scale=self.scale, max_summands=config.participant_count)
        except EncodingError as exc:
            raise InputFileError(str(exc)) from None

    def encode(self, config: RoundConfig, source: RandomSource) -> np.ndarray:
        if self.vector.size != config.dim:
            raise InputFileError(f"the input has {self.vector.size} elements, the round's dim is {config.dim}")
        return self.encoding_for(config).encode(self.vector, source)


ClientInput = RingVectorInput | RealVectorInput


def load_npy_vector(path: Path) -> np.ndarray:
    """A 1-D numeric vector from a ``.npy`` file, never unpickling anything."""
    try:
        vector = np.load(path, allow_pickle=False, mmap_mode=None)
    except FileNotFoundError:
        raise InputFileError(f"input file {path} does not exist") from None
    except (ValueError, OSError, EOFError) as exc:
        raise InputFileError(f"cannot read {path} as a .npy array (pickled or malformed files are refused): {exc}") from None
    if not isinstance(vector, np.ndarray):
        raise InputFileError(f"{path} is not a single .npy array")
    if vector.ndim != 1:
        raise InputFileError(f"{path} holds shape {vector.shape}; the input must be a 1-D vector")
    if vector.dtype.kind not in "uif":
        raise InputFileError(f"{path} holds dtype {vector.dtype}; the input must be numeric")
    return vector


def input_from_npy(path: Path, *, clip: float | None = None, scale: float | None = None) -> ClientInput:
    """Unsigned vectors are ring inputs; float vectors need ``clip`` (and optionally ``scale``)."""
    vector = load_npy_vector(path)
    if vector.dtype.kind == "u":
        if clip is not None or scale is not None:
            raise InputFileError(f"{path} is already a ring vector ({vector.dtype}); --clip/--scale apply to float inputs only")
        return RingVectorInput(vector)
    if vector.dtype.kind == "f":
        if clip is None:
            raise InputFileError(f"{path} holds floats: give --clip (and optionally --scale) to encode them into the ring")
        return RealVectorInput(vector, clip=clip, scale=scale)
    raise InputFileError(f"{path} holds signed integers ({vector.dtype}); give a ring vector (unsigned) or floats")
