"""The engines of chunk tasks give the bytes the task gives in process; Ray on a local cluster.

The Ray tests start a local cluster (``ray.init(num_cpus=2)``), as CI does; they are
skipped, with the reason shown, only when Ray is not installed or its cluster cannot start
on the machine.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from secagg.chunks import ChunkLayout
from secagg.server.chunk_tasks import chunk_tasks, run_mask_chunk_task, unmasking_masks
from service.rounds.engines import EngineKind, RayEngine, make_engine
from tests.secagg.test_chunks import deferred_round


@pytest.fixture(scope="module")
def plan_tasks():
    round_, _ = deferred_round(7, 3000, 32, {2, 5}, seed=21)
    layout = ChunkLayout(dim=3000, bits=32, chunk_bytes=1024)
    return chunk_tasks(layout, unmasking_masks(round_.server.unmasking_plan))


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[None]:
    try:
        import ray
    except ImportError:
        pytest.skip("Ray is not installed (pip install 'secagg[ray]')")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    except Exception as exc:  # a machine where Ray's cluster cannot start
        pytest.skip(f"a local Ray cluster could not start: {type(exc).__name__}: {exc}")
    yield
    ray.shutdown()


@pytest.mark.parametrize("kind", [EngineKind.THREAD, EngineKind.PROCESS])
def test_local_engines_return_each_task_exactly_as_run_in_process(kind: EngineKind, plan_tasks) -> None:
    engine = make_engine(kind, workers=2)
    try:
        results = {task.index: total for task, total in engine.run(plan_tasks)}
    finally:
        engine.close()
    assert sorted(results) == [task.index for task in plan_tasks]
    for task in plan_tasks:
        np.testing.assert_array_equal(results[task.index], run_mask_chunk_task(task))


def test_the_ray_engine_on_a_local_cluster_returns_each_task_exactly_as_run_in_process(ray_cluster, plan_tasks) -> None:
    engine = RayEngine(None, workers=2)
    results = {task.index: total for task, total in engine.run(plan_tasks)}
    assert sorted(results) == [task.index for task in plan_tasks]
    for task in plan_tasks:
        np.testing.assert_array_equal(results[task.index], run_mask_chunk_task(task))


def test_a_round_unmasked_on_the_ray_engine_has_the_exact_sum(ray_cluster, tmp_path: Path) -> None:
    from service.db import Database
    from service.metrics import ServiceMetrics
    from service.rounds import RoundEngine
    from tests.service.test_mask_expansion import FakeClock, expected, result_of, round_in_mask_expansion

    database = Database(f"sqlite:///{tmp_path / 'ray.db'}")
    database.create_schema()
    engine = RoundEngine(
        database,
        metrics=ServiceMetrics.create(),
        ledger=None,
        max_dim=1 << 20,
        clock=FakeClock(),
        chunk_engine=lambda: RayEngine(None, workers=2),
    )
    round_ = round_in_mask_expansion(engine, seed=740)
    assert engine.expansion.expand(round_.round_id)
    assert engine.expansion.engine.kind is EngineKind.RAY
    np.testing.assert_array_equal(result_of(engine, round_), expected(round_))
    database.dispose()
