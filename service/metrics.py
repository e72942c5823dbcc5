"""Prometheus metrics, one registry per app (so tests can build several apps in one process).

Names follow the protocol's round names (``stage`` label values are ``ServerStage``
values). With ``--workers N`` each worker process exports its own counters; scrape
each worker or aggregate at the collector. No label ever carries a participant id,
a vector or a key.
"""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram

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
                "Rounds rebuilt from the database because this process had no current session cached.",
                registry=registry,
            ),
        )
