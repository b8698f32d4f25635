"""Precompiled proto3 JSON encoding: `json_format.MessageToDict` without per-call reflection."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.internal import type_checkers
from google.protobuf.message import Message

__all__ = ["MessageEncoder", "message_encoder"]

Converter = Callable[[Any], Any]

# Types json_format prints in their own way; they are delegated to it (Timestamp and
# Duration take the direct path: they are common and their JSON form is one method call).
_DELEGATED = frozenset(
    {
        "google.protobuf.Any",
        "google.protobuf.Struct",
        "google.protobuf.Value",
        "google.protobuf.ListValue",
        "google.protobuf.FieldMask",
        *(
            f"google.protobuf.{n}Value"
            for n in ("Double", "Float", "Int64", "UInt64", "Int32", "UInt32", "Bool", "String")
        ),
        "google.protobuf.BytesValue",
    }
)
_AS_JSON_STRING = frozenset({"google.protobuf.Timestamp", "google.protobuf.Duration"})
_INT64 = frozenset({FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64})


def _double(value: float) -> Any:
    if math.isfinite(value):
        return value
    if math.isnan(value):
        return "NaN"
    return "Infinity" if value > 0 else "-Infinity"


def _float(value: float) -> Any:
    if math.isfinite(value):
        return type_checkers.ToShortestFloat(value)
    return _double(value)


def _bytes(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def _bool_key(key: bool) -> str:
    return "true" if key else "false"


def _delegate(message: Message) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def _json_string(message: Message) -> str:
    return message.ToJsonString()  # type: ignore[attr-defined, no-any-return]


class MessageEncoder:
    """Encodes one message type as `MessageToDict(m, always_print_fields_with_no_presence=True)`.

    The field table (JSON names, converters, defaults of fields without presence) is
    built once; encoding is a dict copy plus one converter call per set field.
    """

    __slots__ = ("_by_number", "_defaults", "descriptor")

    def __init__(self, descriptor: Descriptor) -> None:
        self.descriptor = descriptor
        self._by_number: dict[int, tuple[str, Converter | None]] = {}
        self._defaults: dict[str, Any] = {}

    def _compile(self, cache: dict[str, MessageEncoder]) -> None:
        for field in self.descriptor.fields:
            self._by_number[field.number] = (field.json_name, _field_converter(field, cache))
            if not field.has_presence:
                self._defaults[field.json_name] = _default(field)

    def encode(self, message: Message) -> dict[str, Any]:
        # A shallow copy: default `[]`/`{}` objects are shared between results, which is
        # fine because results are only ever serialized, never mutated.
        out = self._defaults.copy()
        by_number = self._by_number
        for field, value in message.ListFields():
            name, convert = by_number[field.number]
            out[name] = value if convert is None else convert(value)
        return out


def message_encoder(descriptor: Descriptor) -> Callable[[Message], Any]:
    """The JSON-object function for messages of `descriptor` (WKTs included)."""
    return _message_converter(descriptor, {})


def _message_converter(descriptor: Descriptor, cache: dict[str, MessageEncoder]) -> Converter:
    full_name = descriptor.full_name
    if full_name in _AS_JSON_STRING:
        return _json_string
    if full_name in _DELEGATED:
        return _delegate
    encoder = cache.get(full_name)
    if encoder is None:
        # Registered before compiling so recursive message types reuse it.
        encoder = cache[full_name] = MessageEncoder(descriptor)
        encoder._compile(cache)
    return encoder.encode


def _field_converter(field: FieldDescriptor, cache: dict[str, MessageEncoder]) -> Converter | None:
    message_type = field.message_type
    if message_type is not None and message_type.GetOptions().map_entry:
        key_field = message_type.fields_by_name["key"]
        value_convert = _single_converter(message_type.fields_by_name["value"], cache)
        key: Converter = _bool_key if key_field.cpp_type == FieldDescriptor.CPPTYPE_BOOL else str
        if value_convert is None:
            return lambda mapping: {key(k): v for k, v in mapping.items()}
        return lambda mapping: {key(k): value_convert(v) for k, v in mapping.items()}
    convert = _single_converter(field, cache)
    if field.is_repeated:
        if convert is None:
            return list
        return lambda values: [convert(v) for v in values]
    return convert


def _single_converter(field: FieldDescriptor, cache: dict[str, MessageEncoder]) -> Converter | None:
    cpp_type = field.cpp_type
    if cpp_type == FieldDescriptor.CPPTYPE_MESSAGE:
        assert field.message_type is not None
        return _message_converter(field.message_type, cache)
    if cpp_type == FieldDescriptor.CPPTYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        if enum.full_name == "google.protobuf.NullValue":
            return lambda value: None
        names = {v.number: v.name for v in enum.values}
        # Open enums keep unknown numbers, printed as numbers (like json_format).
        return lambda value: names.get(value, value)
    if cpp_type in _INT64:
        return str
    if cpp_type == FieldDescriptor.CPPTYPE_DOUBLE:
        return _double
    if cpp_type == FieldDescriptor.CPPTYPE_FLOAT:
        return _float
    if field.type == FieldDescriptor.TYPE_BYTES:
        return _bytes
    return None  # int32 family, bool, string: already JSON values


def _default(field: FieldDescriptor) -> Any:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return {}
    if field.is_repeated:
        return []
    convert = _single_converter(field, {})
    value = field.default_value
    return value if convert is None else convert(value)
