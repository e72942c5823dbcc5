"""Mask regeneration spread over threads gives bit-for-bit the single-threaded result."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from secagg.hazmat.prg import BLOCK_BYTES, SignedSeed, accumulate_masks
from secagg.hazmat.randomness import DeterministicRandom
from secagg.server import ServerSession
from tests.secagg.harness import make_round, run


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from([np.uint8, np.uint16, np.uint32, np.uint64]),
    blocks=st.floats(min_value=0.01, max_value=4.5),
    threads=st.integers(min_value=2, max_value=5),
    signs=st.lists(st.sampled_from([1, -1]), min_size=1, max_size=5),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_threaded_accumulation_equals_single_threaded(dtype, blocks, threads, signs, seed):
    source = DeterministicRandom.from_int(seed)
    size = max(1, int(blocks * BLOCK_BYTES / np.dtype(dtype).itemsize))
    masks = [SignedSeed(source.random_bytes(32), sign) for sign in signs]
    start = np.empty(size, dtype=dtype)
    source.fill(start)
    single = accumulate_masks(start.copy(), masks)
    threaded = accumulate_masks(start.copy(), masks, threads=threads)
    np.testing.assert_array_equal(single, threaded)


def test_threads_below_one_are_refused():
    with pytest.raises(ValueError):
        accumulate_masks(np.zeros(4, np.uint32), [SignedSeed(bytes(32), 1)], threads=0)
    with pytest.raises(ValueError):
        ServerSession(make_round(3).config, mask_threads=0)


def test_server_with_mask_threads_gives_the_exact_sum():
    round_ = make_round(6, dim=200_000, seed=4)
    round_.server = ServerSession(round_.config, mask_threads=3)
    outcome = run(round_, drop={2: {1}})
    assert outcome.completed
    np.testing.assert_array_equal(outcome.result, round_.expected_sum(outcome.survivors))
