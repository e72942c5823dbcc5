"""Prometheus metrics, one registry per app (so tests can build several apps in one process).

Names follow the protocol's round names (``stage`` label values are ``ServerStage``
values). No label ever carries a participant id, a vector or a key.

With ``--workers N`` the server runs prometheus_client's multiprocess mode: ``secagg
server`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh directory under the data
directory before the workers start, every worker writes its samples there, and
``GET /metrics`` on any worker aggregates all of them (:func:`exposition`), so one scrape
counts every worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROCESS_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST
GROUP_COMMIT_BUCKETS = (1, 2, 4, 8, 16, 32, 64)

STAGE_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass(frozen=True, slots=True)
class ServiceMetrics:
    registry: CollectorRegistry
    rounds_finished: Counter
    stage_duration: Histogram
    dropouts: Counter
    bytes_in: Counter
    messages_accepted: Counter
    messages_rejected: Counter
    auth_failures: Counter
    session_replays: Counter
    unmask_tasks: Counter
    group_commit_batch: Histogram
    chunks_stored: Counter

    @classmethod
    def create(cls) -> ServiceMetrics:
        registry = CollectorRegistry(auto_describe=True)
        return cls(
            registry=registry,
            rounds_finished=Counter(
                "secagg_rounds_finished",
                "Rounds that finished, by outcome and abort reason.",
                ["outcome", "reason"],
                registry=registry,
            ),
            stage_duration=Histogram(
                "secagg_stage_duration_seconds",
                "Time from a stage opening to its closing.",
                ["stage"],
                buckets=STAGE_DURATION_BUCKETS,
                registry=registry,
            ),
            dropouts=Counter(
                "secagg_dropouts",
                "Participants expected in a stage that did not answer before it closed.",
                ["stage"],
                registry=registry,
            ),
            bytes_in=Counter("secagg_message_bytes_in", "Bytes of accepted client messages.", ["stage"], registry=registry),
            messages_accepted=Counter("secagg_messages_accepted", "Accepted client messages.", ["stage"], registry=registry),
            messages_rejected=Counter(
                "secagg_messages_rejected", "Refused client messages, by problem type.", ["problem"], registry=registry
            ),
            auth_failures=Counter(
                "secagg_auth_failures", "Refused credentials, by problem type.", ["problem"], registry=registry
            ),
            session_replays=Counter(
                "secagg_session_replays",
                "Round sessions rebuilt from the database: cold (no session in this process), stale (a cached "
                "session that could not catch up), catch-up (only what other workers committed since).",
                ["kind"],
                registry=registry,
            ),
            unmask_tasks=Counter(
                "secagg_unmask_tasks", "Chunk tasks of the mask expansion committed.", ["engine"], registry=registry
            ),
            group_commit_batch=Histogram(
                "secagg_group_commit_batch_size",
                "Units of work (stored chunks, first fetches) per shared transaction.",
                buckets=GROUP_COMMIT_BUCKETS,
                registry=registry,
            ),
            chunks_stored=Counter("secagg_masked_input_chunks_stored", "Masked-input chunks stored.", registry=registry),
        )

    def exposition(self) -> bytes:
        """The Prometheus text of every worker (multiprocess mode) or of this process."""
        return exposition(self.registry)


def multiprocess_directory() -> str | None:
    return os.environ.get(MULTIPROCESS_DIRECTORY_VARIABLE) or None


def exposition(registry: CollectorRegistry) -> bytes:
    if multiprocess_directory() is None:
        return generate_latest(registry)
    aggregate = CollectorRegistry()
    MultiProcessCollector(aggregate)
    return generate_latest(aggregate)
