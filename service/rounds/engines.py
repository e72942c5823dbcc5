"""Where chunk tasks run: threads, a local process pool, or a Ray cluster.

The mask expansion (:mod:`service.rounds.expansion`) hands an engine the chunk tasks of a
round (:class:`secagg.server.chunk_tasks.MaskChunkTask`: pure functions of public
parameters, signed seeds and a range) and commits each result as it comes back, in
whatever order. An engine keeps at most ``2 * workers`` tasks in flight, so the server
holds O(chunk x workers) of mask totals at any time, never the vector.

* ``thread``: a thread pool in the server process (AES-CTR and numpy release the GIL);
  no start-up cost, used for small rounds and tests;
* ``process`` (the default): a pool of worker processes on this machine, started with
  ``forkserver`` (never ``fork`` from a multi-threaded server);
* ``ray``: tasks on a Ray cluster (``secagg server --ray-address ...``). The signed seeds
  go into the object store once per round; each task returns its chunk's mask total.
  Ray is an optional extra (``pip install 'secagg[ray]'``). The Ray cluster receives
  PRG seeds derived from reconstructed secrets: it belongs to the server's operator and
  is inside the server's trust boundary, like the server's own processes.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor, wait
from enum import Enum
from typing import Any, Protocol

import numpy as np

from secagg.server.chunk_tasks import MaskChunkTask, run_mask_chunk_task


class EngineKind(str, Enum):
    THREAD = "thread"
    PROCESS = "process"
    RAY = "ray"


class ChunkEngine(Protocol):
    """Runs chunk tasks and yields ``(task, mask total)`` as each finishes, in any order."""

    kind: EngineKind
    workers: int

    def run(self, tasks: Iterable[MaskChunkTask]) -> Iterator[tuple[MaskChunkTask, np.ndarray]]: ...

    def warm(self) -> None:
        """Start the workers now (not at the first expansion, where it would compete with requests)."""
        ...

    def close(self) -> None: ...


def default_workers() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class ExecutorEngine:
    """Threads or local processes behind :class:`concurrent.futures.Executor`."""

    def __init__(self, kind: EngineKind, workers: int) -> None:
        if workers < 1:
            raise ValueError("an engine needs at least one worker")
        self.kind = kind
        self.workers = workers
        self._executor: Executor | None = None

    def _pool(self) -> Executor:
        if self._executor is None:
            if self.kind is EngineKind.THREAD:
                self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="secagg-unmask")
            else:
                method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
                self._executor = ProcessPoolExecutor(max_workers=self.workers, mp_context=multiprocessing.get_context(method))
        return self._executor

    def run(self, tasks: Iterable[MaskChunkTask]) -> Iterator[tuple[MaskChunkTask, np.ndarray]]:
        pool = self._pool()
        pending: dict[Future[np.ndarray], MaskChunkTask] = {}
        queue = iter(tasks)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * self.workers:
                task = next(queue, None)
                if task is None:
                    exhausted = True
                    break
                pending[pool.submit(run_mask_chunk_task, task)] = task
            if not pending:
                return
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                task = pending.pop(future)
                yield task, future.result()

    def warm(self) -> None:
        pool = self._pool()
        empty = MaskChunkTask(bits=32, start=0, stop=0, masks=())
        for future in [pool.submit(run_mask_chunk_task, empty) for _ in range(self.workers)]:
            future.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


class RayEngine:
    """Chunk tasks as Ray remote functions; ``address`` is passed to :func:`ray.init`."""

    kind = EngineKind.RAY

    def __init__(self, address: str | None, *, workers: int | None = None, init_options: dict[str, Any] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise RuntimeError("the Ray engine needs the optional extra: pip install 'secagg[ray]'") from None
        self._ray = ray
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, log_to_driver=False, **(init_options or {}))
        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self._remote = ray.remote(num_cpus=1, max_retries=3)(_ray_mask_chunk)

    def run(self, tasks: Iterable[MaskChunkTask]) -> Iterator[tuple[MaskChunkTask, np.ndarray]]:
        ray = self._ray
        shared: dict[int, Any] = {}
        pending: dict[Any, MaskChunkTask] = {}
        queue = iter(tasks)
        exhausted = False
        while True:
            while not exhausted and len(pending) < 2 * self.workers:
                task = next(queue, None)
                if task is None:
                    exhausted = True
                    break
                key = id(task.masks)
                if key not in shared:  # one copy of the seeds in the object store per round
                    shared[key] = ray.put(task.masks)
                pending[self._remote.remote(task.bits, task.start, task.stop, shared[key])] = task
            if not pending:
                return
            done, _ = ray.wait(list(pending), num_returns=1)
            for reference in done:
                task = pending.pop(reference)
                yield task, ray.get(reference)

    def warm(self) -> None:
        """Connected to the cluster already (in the constructor)."""

    def close(self) -> None:
        """The cluster stays up (it is the operator's); this process disconnects at exit."""


def _ray_mask_chunk(bits: int, start: int, stop: int, masks: Any) -> np.ndarray:
    return run_mask_chunk_task(MaskChunkTask(bits=bits, start=start, stop=stop, masks=tuple(masks)))


def make_engine(kind: EngineKind, *, workers: int | None = None, ray_address: str | None = None) -> ChunkEngine:
    if kind is EngineKind.RAY:
        return RayEngine(ray_address, workers=workers)
    return ExecutorEngine(kind, workers or default_workers())
