"""Structured logging: JSON and console output, request/job ids from contextvars."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import structlog
from visionmesh.common.logging import (
    bind_job_id,
    bind_request_id,
    configure_logging,
    current_job_id,
    current_request_id,
    get_logger,
)

Configure = Callable[..., io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """configure_logging into a buffer; restores the root logger and structlog afterwards."""
    root = logging.getLogger()
    level = root.level

    def run(*, json: bool = True, level: str = "INFO") -> io.StringIO:
        stream = io.StringIO()
        configure_logging(service="svc", level=level, json=json, stream=stream)
        return stream

    yield run
    for handler in list(root.handlers):
        if handler.get_name() == "visionmesh":
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_request_and_job_ids(configure: Configure) -> None:
    stream = configure()
    log = get_logger("visionmesh.test")
    with bind_request_id("req-1"), bind_job_id("job-9"):
        log.info("epoch finished", epoch=3)
    log.info("outside")
    inside, outside = lines(stream)
    assert inside["event"] == "epoch finished"
    assert inside["epoch"] == 3
    assert (inside["request_id"], inside["job_id"]) == ("req-1", "job-9")
    assert (inside["service"], inside["level"], inside["logger"]) == (
        "svc",
        "info",
        "visionmesh.test",
    )
    assert "timestamp" in inside
    assert "request_id" not in outside and "job_id" not in outside


def test_stdlib_loggers_get_the_same_format(configure: Configure) -> None:
    stream = configure()
    with bind_request_id("req-2"):
        logging.getLogger("thirdparty").warning("disk %s full", "/data")
    [entry] = lines(stream)
    assert entry["event"] == "disk /data full"
    assert entry["request_id"] == "req-2"
    assert entry["level"] == "warning"


def test_level_filters(configure: Configure) -> None:
    stream = configure(level="warning")
    log = get_logger("x")
    log.info("hidden")
    log.warning("shown")
    assert [entry["event"] for entry in lines(stream)] == ["shown"]


def test_exceptions_are_rendered(configure: Configure) -> None:
    stream = configure()
    try:
        raise RuntimeError("kaput")
    except RuntimeError:
        get_logger("x").exception("failed")
    [entry] = lines(stream)
    assert "RuntimeError: kaput" in entry["exception"]


def test_console_output(configure: Configure) -> None:
    stream = configure(json=False)
    with bind_request_id("req-3"):
        get_logger("x").info("hello", model="yolo")
    text = stream.getvalue()
    assert "hello" in text and "request_id=req-3" in text and "model=yolo" in text


def test_reconfiguring_does_not_duplicate_output(configure: Configure) -> None:
    stream = configure()
    configure_logging(service="svc", level="INFO", json=True, stream=stream)
    get_logger("x").info("once")
    assert len(lines(stream)) == 1


def test_unknown_level_is_rejected(configure: Configure) -> None:
    with pytest.raises(ValueError, match="log level"):
        configure(level="LOUD")


def test_bind_request_id_generates_and_restores() -> None:
    assert current_request_id() is None
    with bind_request_id() as generated:
        assert generated and current_request_id() == generated
        with bind_request_id("inner"):
            assert current_request_id() == "inner"
        assert current_request_id() == generated
    assert current_request_id() is None
    assert current_job_id() is None


async def test_ids_are_isolated_between_tasks(configure: Configure) -> None:
    stream = configure()

    async def work(request_id: str) -> None:
        with bind_request_id(request_id):
            for step in range(3):
                await asyncio.sleep(0)
                get_logger("x").info("step", step=step)

    await asyncio.gather(work("a"), work("b"))
    seen = {(entry["request_id"], entry["step"]) for entry in lines(stream)}
    assert seen == {(rid, step) for rid in "ab" for step in range(3)}
