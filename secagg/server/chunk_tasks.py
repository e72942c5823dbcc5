"""Mask expansion as chunk tasks: pure functions of public parameters, revealed secrets and a range.

Once R4 has closed, every secret the unmasking needs is reconstructed and verified
(:func:`secagg.server.unmasking.plan_unmasking`); what remains is the expansion: for each
chunk of the vector, the signed sum of the chunk's share of every mask to remove
(Bonawitz et al. 2017, section 4, Round 4: the self-masks of U3 and the pairwise masks of
each dropped client with its surviving neighbours). fcp's SecAgg server runs this as its
PRNG-running state; here it is split by chunk:

* :func:`unmasking_masks` turns a plan into the signed PRG seeds, once per round (one
  X25519 agreement per (dropped client, surviving neighbour) pair);
* a :class:`MaskChunkTask` names a ring, an element range and signed seeds;
  :func:`run_mask_chunk_task` returns the chunk's mask total
  ``sum(sign * PRG(seed)[start:stop])`` mod 2^w. AES-CTR is seekable, so the result is
  exactly that slice of the whole-vector expansion (:func:`secagg.hazmat.prg.accumulate_masks_range`);
* :func:`unmask_chunk` adds that total to the chunk of the masked sum and reduces mod 2^b.

A task reads nothing but its arguments and writes nothing but its result, so it may run in
any process or on any machine, twice, or out of order: the caller commits each chunk's
result idempotently. Its arguments include PRG seeds derived from reconstructed secrets:
whatever runs tasks is inside the server's trust boundary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from secagg.chunks import ChunkLayout
from secagg.encoding import Ring
from secagg.hazmat.prg import SignedSeed, accumulate_masks_range
from secagg.server.unmasking import UnmaskingPlan


@dataclass(frozen=True, slots=True)
class MaskChunkTask:
    """Expand and accumulate ``masks`` over elements ``[start, stop)`` of a vector in Z_2^``bits``."""

    bits: int
    start: int
    stop: int
    masks: tuple[SignedSeed, ...]
    index: int = 0
    """The chunk's index, carried through for the caller's bookkeeping."""

    def __post_init__(self) -> None:
        Ring(self.bits)
        if not 0 <= self.start <= self.stop:
            raise ValueError("a chunk task needs 0 <= start <= stop")


def unmasking_masks(plan: UnmaskingPlan) -> tuple[SignedSeed, ...]:
    """Every signed seed the plan's unmasking removes, in the plan's order."""
    return tuple(mask for batch in plan.mask_batches() for mask in batch)


def chunk_tasks(layout: ChunkLayout, masks: Sequence[SignedSeed], indices: Sequence[int] | None = None) -> list[MaskChunkTask]:
    """One task per chunk of ``layout`` (or per chunk listed in ``indices``)."""
    chosen = range(layout.count) if indices is None else indices
    shared = tuple(masks)
    tasks = []
    for index in chosen:
        start, stop = layout.elements(index)
        tasks.append(MaskChunkTask(bits=layout.bits, start=start, stop=stop, masks=shared, index=index))
    return tasks


def run_mask_chunk_task(task: MaskChunkTask) -> np.ndarray:
    """The chunk's mask total ``sum(sign * PRG(seed)[start:stop])`` mod 2^w (container dtype)."""
    total = np.zeros(task.stop - task.start, dtype=Ring(task.bits).dtype)
    return accumulate_masks_range(total, task.masks, task.start)


def unmask_chunk(masked_sum: np.ndarray, mask_total: np.ndarray, bits: int) -> np.ndarray:
    """The chunk of the result: masked sum plus mask total, reduced mod 2^b (a new array)."""
    ring = Ring(bits)
    if masked_sum.shape != mask_total.shape:
        raise ValueError("the masked sum and the mask total of a chunk must have the same length")
    result = np.add(masked_sum, mask_total, dtype=ring.dtype)
    return ring.reduce(result)
