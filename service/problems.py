"""Problem details (RFC 9457) in the service: never a 5xx for bad input.

Every refusal the service makes is a :class:`ServiceProblem` raised with a
:class:`~secagg.http_contract.ProblemType` (the problem types and their statuses are
part of the shared HTTP contract, :mod:`secagg.http_contract`); the app's exception
handlers render it as ``application/problem+json``.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

from secagg.http_contract import (
    PROBLEM_CONTENT_TYPE,
    PROBLEM_OF_REJECT_REASON,
    PROBLEM_OF_SUFFIX,
    PROBLEM_TYPE_PREFIX,
    ProblemType,
    problem_body,
)

__all__ = [
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_OF_REJECT_REASON",
    "PROBLEM_OF_SUFFIX",
    "PROBLEM_TYPE_PREFIX",
    "Problem",
    "ProblemType",
    "ServiceProblem",
    "problem_body",
    "problem_responses",
]


class ServiceProblem(Exception):
    """A refusal with a stable problem type; rendered by the app's exception handler."""

    def __init__(
        self,
        problem: ProblemType,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.problem = problem
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra or {}
        super().__init__(f"{problem.suffix}: {detail}")

    def body(self) -> dict[str, Any]:
        return problem_body(self.problem, self.detail, **self.extra)


class Problem(BaseModel):
    """The OpenAPI schema of an ``application/problem+json`` body."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


def problem_responses(*problems: ProblemType) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given problems, grouped by status."""
    by_status: dict[int, list[str]] = {}
    for problem in problems:
        by_status.setdefault(problem.status, []).append(problem.suffix)
    return {
        status: {
            "model": Problem,
            "description": "Problem types: " + ", ".join(sorted(suffixes)),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status, suffixes in sorted(by_status.items())
    }
