"""Protobuf text format for Triton's model configuration (config.pbtxt), from plain values.

The export service does not depend on Triton's generated `model_config_pb2`, so configs are
built as nested dicts and written here: a dict is a message, a list of dicts a repeated
message field, a list of scalars a repeated scalar field, `Enum` an enum value, and a str a
string (escaped the way protobuf's C++ text parser, which Triton uses, reads it back).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from google.protobuf import text_encoding

_INDENT = "  "


class Enum(str):
    """An enum value: written bare (`kind: KIND_AUTO`), not quoted."""

    __slots__ = ()


def dumps(message: Mapping[str, Any]) -> str:
    """The text format of a message given as a dict, fields in the dict's order."""
    return "".join(_fields(message, 0))


def _fields(message: Mapping[str, Any], depth: int) -> list[str]:
    lines: list[str] = []
    pad = _INDENT * depth
    for name, value in message.items():
        if isinstance(value, Mapping):
            lines.append(f"{pad}{name} {{\n")
            lines.extend(_fields(value, depth + 1))
            lines.append(f"{pad}}}\n")
        elif isinstance(value, Sequence) and not isinstance(value, str | bytes):
            if value and all(isinstance(item, Mapping) for item in value):
                # Repeated messages (and map entries) as one field per element: the form
                # Triton's own examples use, and the only one maps accept in older parsers.
                for item in value:
                    lines.append(f"{pad}{name} {{\n")
                    lines.extend(_fields(item, depth + 1))
                    lines.append(f"{pad}}}\n")
            else:
                lines.append(f"{pad}{name}: [{', '.join(_scalar(item) for item in value)}]\n")
        else:
            lines.append(f"{pad}{name}: {_scalar(value)}\n")
    return lines


def _scalar(value: Any) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return f'"{text_encoding.CEscape(value.encode("utf-8"), as_utf8=True)}"'
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as a protobuf text scalar")
