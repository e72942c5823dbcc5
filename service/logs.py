"""Structured JSON logs: one object per line, no secrets, no vectors, no shares.

Tracebacks of internal errors are logged (code locations only, never local values).
Log records carry an ``event`` name (the message) and only the ``extra`` fields listed in
:data:`ALLOWED_FIELDS`; anything else passed as ``extra`` is dropped, so a careless call
cannot leak a key or a vector into the logs.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

ALLOWED_FIELDS = frozenset(
    {
        "event",
        "round_id",
        "stage",
        "sender",
        "participant",
        "participants",
        "role",
        "problem",
        "reason",
        "status",
        "size",
        "responded",
        "expected",
        "outcome",
        "duration_seconds",
        "error",
        "method",
        "path",
        "workers",
        "database",
        "host",
        "port",
        "closed_stages",
        "count",
        "ledger_public_key",
        "url",
        "operator_url",
    }
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "process": record.process,
            "event": record.getMessage(),
        }
        for name in ALLOWED_FIELDS:
            if name != "event" and name in record.__dict__:
                entry[name] = record.__dict__[name]
        if record.exc_info and record.exc_info[0] is not None:
            entry["exception"] = record.exc_info[0].__name__
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, sort_keys=True, default=str)


def configure_logging(level: str = "INFO") -> None:
    """Route the ``secagg`` and ``uvicorn`` loggers through one JSON handler on stderr."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("secagg", "uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(level.upper())


def uvicorn_log_config(level: str = "INFO") -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn that uses :class:`JsonFormatter`."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "service.logs.JsonFormatter"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}},
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.error": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "secagg": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }
