"""Structured JSON logs (structlog), with secrets redacted before anything is written."""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

_SECRET_WORDS = ("password", "secret", "token", "authorization", "passphrase")
REDACTED = "***"


def _redact(_logger: Any, _name: str, event_dict: MutableMapping[str, Any]) -> Any:
    for key in list(event_dict):
        if any(word in key.lower() for word in _SECRET_WORDS):
            event_dict[key] = REDACTED
    return event_dict


def configure(level: str = "info", log_file: Path | None = None) -> None:
    """JSON lines to stderr (or a file), stdlib loggers (uvicorn, alembic) included."""
    stream: TextIO = sys.stderr
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        stream = log_file.open("a", buffering=1)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # Chatty libraries: APScheduler logs every run of every job at INFO, and paramiko
    # logs each refused connection attempt with a traceback; our own events say more.
    for name in ("apscheduler", "paramiko"):
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.getLogger("paramiko.transport").setLevel(logging.CRITICAL)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def thread_stack(thread_id: int, limit: int = 12) -> list[str]:
    """The innermost ``limit`` frames another thread is in now, one entry per frame
    (empty when the thread is gone): for logs that say what a stall waited behind."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return []
    return [entry.rstrip() for entry in traceback.format_stack(frame, limit=limit)]
