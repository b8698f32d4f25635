"""Formatting of the gateway's JSON for people: states, sizes, times, tables, detail grids."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = [
    "details",
    "duration",
    "error_text",
    "human_bytes",
    "metrics_text",
    "number",
    "short",
    "styled_state",
    "table",
    "timestamp",
    "to_int",
]

_STATE_STYLE: Final = {
    "PENDING": "dim",
    "QUEUED": "blue",
    "RUNNING": "cyan",
    "SUCCEEDED": "green",
    "FAILED": "red",
    "CANCELLING": "yellow",
    "CANCELLED": "yellow",
    "UPLOADING": "blue",
    "READY": "green",
}


def short(enum_value: Any, prefix: str) -> str:
    """`JOB_STATE_RUNNING` -> `RUNNING`; unset and UNSPECIFIED -> `-`."""
    text = str(enum_value or "").removeprefix(prefix)
    return "-" if text in ("", "UNSPECIFIED") else text


def styled_state(enum_value: Any, prefix: str) -> str:
    name = short(enum_value, prefix)
    style = _STATE_STYLE.get(name)
    return f"[{style}]{name}[/]" if style else name


def to_int(value: Any) -> int:
    # proto3 JSON writes 64-bit integers as strings.
    try:
        return int(value or 0)
    except (TypeError, ValueError):
        return 0


def timestamp(value: Any) -> str:
    """An RFC 3339 time in local time, `YYYY-MM-DD HH:MM:SS`; unset -> `-`."""
    if not value:
        return "-"
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return str(value)
    return parsed.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def human_bytes(value: Any) -> str:
    size = float(to_int(value))
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover


def duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def number(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.3g}"
        return f"{value:.4f}".rstrip("0").rstrip(".") if value != int(value) else f"{value:.0f}"
    return str(value)


def error_text(error: Mapping[str, Any] | None) -> str:
    """A JobError as escaped markup, `REASON: message`; empty when there is none."""
    if not error or not (error.get("reason") or error.get("message")):
        return ""
    reason, message = str(error.get("reason") or "UNKNOWN"), str(error.get("message") or "")
    return escape(f"{reason}: {message}" if message else reason)


def metrics_text(metrics: Mapping[str, Any] | None) -> str:
    if not metrics:
        return "-"
    return "  ".join(f"{name} {number(value)}" for name, value in metrics.items())


def table(*columns: str, title: str | None = None) -> Table:
    result = Table(box=box.SIMPLE_HEAD, title=title, title_justify="left", pad_edge=False)
    for column in columns:
        if column == "ID":
            # Ids are what people copy into the next command: never cut them.
            result.add_column(column, no_wrap=True, min_width=36)
        else:
            result.add_column(column)
    return result


def details(console: Console, rows: list[tuple[str, str]]) -> None:
    """`key  value` lines, keys bold, values folded rather than cut."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value)
    console.print(grid)
