"""Structured logging (structlog over stdlib) with request and job ids bound per task."""

from __future__ import annotations

import contextlib
import logging
import sys
import uuid
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

__all__ = [
    "bind_job_id",
    "bind_request_id",
    "configure_logging",
    "current_job_id",
    "current_request_id",
    "get_logger",
    "new_request_id",
]

_request_id: ContextVar[str | None] = ContextVar("visionmesh_request_id", default=None)
_job_id: ContextVar[str | None] = ContextVar("visionmesh_job_id", default=None)

# Marks the root handler we install, so reconfiguring replaces it instead of stacking.
_HANDLER_NAME = "visionmesh"


def new_request_id() -> str:
    return uuid.uuid4().hex


def current_request_id() -> str | None:
    return _request_id.get()


def current_job_id() -> str | None:
    return _job_id.get()


@contextmanager
def bind_request_id(request_id: str | None = None) -> Iterator[str]:
    """Tag every log line in this block (and tasks it spawns) with `request_id`; yields the id."""
    request_id = request_id or new_request_id()
    token = _request_id.set(request_id)
    try:
        yield request_id
    finally:
        _reset(_request_id, token)


@contextmanager
def bind_job_id(job_id: str) -> Iterator[str]:
    """Tag every log line in this block (and tasks it spawns) with `job_id`."""
    token = _job_id.set(job_id)
    try:
        yield job_id
    finally:
        _reset(_job_id, token)


def _reset(var: ContextVar[str | None], token: Any) -> None:
    # An async generator finalised from another task runs `finally` in a different
    # Context; the value lives in the finished task's Context, so there is nothing to undo.
    with contextlib.suppress(ValueError):
        var.reset(token)


def _add_context_ids(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    request_id = _request_id.get()
    if request_id is not None:
        event_dict.setdefault("request_id", request_id)
    job_id = _job_id.get()
    if job_id is not None:
        event_dict.setdefault("job_id", job_id)
    return event_dict


def _add_service(service: str) -> Processor:
    def processor(_: WrappedLogger, __: str, event_dict: MutableMapping[str, Any]) -> EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return processor


def configure_logging(
    *, service: str, level: str = "INFO", json: bool = False, stream: TextIO | None = None
) -> None:
    """Route structlog and stdlib logging (grpc, sqlalchemy, ...) through one renderer.

    Every line carries timestamp, level, logger, service and, when bound,
    request_id and job_id. `json=True` writes one JSON object per line.
    """
    level_number = logging.getLevelName(level.upper())
    if not isinstance(level_number, int):
        raise ValueError(f"unknown log level {level!r}")

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        _add_context_ids,
        _add_service(service),
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Processor
    if json:
        renderer = structlog.processors.JSONRenderer()
        shared.append(structlog.processors.format_exc_info)
    else:
        # Plain tracebacks: rich's "show locals" would print tokens and request payloads.
        renderer = structlog.dev.ConsoleRenderer(
            colors=False, exception_formatter=structlog.dev.plain_traceback
        )

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Loggers created at import time must follow a later reconfiguration (tests, CLI).
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        if existing.get_name() == _HANDLER_NAME:
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level_number)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger named `name` (use `__name__`)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
