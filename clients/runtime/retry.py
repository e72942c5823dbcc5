"""Retries with exponential backoff and jitter, and the polling schedule.

Only *transient* failures are retried: the connection could not be made or broke,
or the server said so (429 Too Many Requests, 502/503/504). A 4xx protocol refusal
is an answer, never retried. The wait before retry ``k`` (0-based) is drawn with
"equal jitter" (Brooker, "Exponential Backoff And Jitter", AWS Architecture Blog,
2015): half of ``min(max_delay, initial_delay * multiplier**k)`` plus a uniform
draw over the other half, so that many banks retrying together spread out but
never retry immediately. A server's ``Retry-After`` (RFC 9110, section 10.2.3) is
honoured when it is longer, up to ``max_retry_after``.

The jitter is not privacy-relevant, but it is still drawn from an injected
:class:`~secagg.hazmat.randomness.RandomSource` (the OS CSPRNG by default) and the
sleep function is injected too, so tests run without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from clients.runtime.errors import ServerUnavailable
from secagg.hazmat.randomness import RandomSource, SystemRandom, uniform_floats

ResultT = TypeVar("ResultT")


class TransientFailure(Exception):
    """Raised by an operation to ask for a retry; ``retry_after`` is the server's hint in seconds."""

    def __init__(self, description: str, *, retry_after: float | None = None) -> None:
        self.description = description
        self.retry_after = retry_after
        super().__init__(description)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently to retry one request."""

    max_attempts: int = 8
    initial_delay: float = 0.1
    multiplier: float = 2.0
    max_delay: float = 10.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if not (0 < self.initial_delay <= self.max_delay) or self.multiplier < 1 or self.max_retry_after < 0:
            raise ValueError("need 0 < initial_delay <= max_delay, multiplier >= 1, max_retry_after >= 0")

    def backoff(self, retry_index: int, source: RandomSource) -> float:
        """The jittered wait before retry ``retry_index`` (0-based), in seconds."""
        ceiling = min(self.max_delay, self.initial_delay * self.multiplier**retry_index)
        return ceiling / 2 + ceiling / 2 * float(uniform_floats(source, 1)[0])

    def wait(self, retry_index: int, retry_after: float | None, source: RandomSource) -> float:
        """The backoff, or the server's ``Retry-After`` when longer (capped)."""
        delay = self.backoff(retry_index, source)
        if retry_after is not None and retry_after > delay:
            delay = min(retry_after, self.max_retry_after)
        return delay


def call_with_retries(
    operation: Callable[[], ResultT],
    *,
    policy: RetryPolicy,
    description: str,
    sleep: Callable[[float], None] = time.sleep,
    source: RandomSource | None = None,
    on_retry: Callable[[int, float, str], None] | None = None,
) -> ResultT:
    """Run ``operation``, retrying on :class:`TransientFailure`; raise :class:`ServerUnavailable` when out of attempts."""
    jitter = source if source is not None else SystemRandom()
    last: TransientFailure | None = None
    for attempt in range(policy.max_attempts):
        try:
            return operation()
        except TransientFailure as failure:
            last = failure
            if attempt + 1 == policy.max_attempts:
                break
            delay = policy.wait(attempt, failure.retry_after, jitter)
            if on_retry is not None:
                on_retry(attempt + 1, delay, failure.description)
            sleep(delay)
    assert last is not None
    raise ServerUnavailable(f"{description}: {last.description} (gave up after {policy.max_attempts} attempts)")


@dataclass(frozen=True, slots=True)
class PollSchedule:
    """How to wait for the server to close a stage: growing intervals, an overall limit.

    The wait before poll ``k`` grows geometrically from ``initial_interval`` to
    ``max_interval``, and is never shorter than the server's ``Retry-After`` (capped
    at ``max_interval``). Growing intervals keep the polling load of a large cohort
    bounded while a stage waits for its slowest member or its deadline.
    """

    initial_interval: float = 0.25
    multiplier: float = 1.5
    max_interval: float = 5.0
    timeout: float = 3600.0

    def __post_init__(self) -> None:
        if not (0 < self.initial_interval <= self.max_interval) or self.multiplier < 1 or self.timeout <= 0:
            raise ValueError("need 0 < initial_interval <= max_interval, multiplier >= 1, timeout > 0")

    def interval(self, poll_index: int, hint: float | None) -> float:
        base = min(self.max_interval, self.initial_interval * self.multiplier**poll_index)
        return max(base, min(hint, self.max_interval)) if hint is not None else base
