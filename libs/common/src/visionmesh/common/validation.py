"""Contract field rules (buf.validate), compiled once per message type into plain checks.

protovalidate is the reference implementation, but it evaluates every standard rule as a
CEL program in a pure-Python interpreter: about 16 ms for one CreateTrainingJobRequest,
which alone would cap the gateway near 60 requests a second per core. The rules our
contracts use (lengths, patterns, `in`, numeric bounds, enums, required, repeated items,
oneof required) are compiled here into closures; a message type that uses anything else
(a custom `cel` expression, string formats such as `email`...) is handed to protovalidate
whole. tests/common/test_validation.py checks that both agree on every request type.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from visionmesh.common.errors import FieldViolation

__all__ = ["collect_violations", "uses_fallback"]

Check = Callable[[Message, str, list[FieldViolation]], None]

_NUMERIC_KINDS = (
    "int32",
    "int64",
    "uint32",
    "uint64",
    "sint32",
    "sint64",
    "fixed32",
    "fixed64",
    "sfixed32",
    "sfixed64",
    "float",
    "double",
)
_SUPPORTED_NUMERIC = {"gt", "gte", "lt", "lte"}
_SUPPORTED_STRING = {"min_len", "max_len", "pattern", "in", "not_in"}
_SUPPORTED_BYTES = {"min_len", "max_len"}
_SUPPORTED_REPEATED = {"min_items", "max_items", "unique", "items"}


class _Unsupported(Exception):
    """The rules of a message need protovalidate itself."""


def _rules_module() -> Any:
    from buf.validate import validate_pb2

    return validate_pb2


def _fmt(value: float | int) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _numeric_check(kind: str, rules: Any) -> Callable[[Any], tuple[str, str] | None]:
    """Bounds of one numeric field: returns (rule id, message) for a bad value."""
    present = {f.name: v for f, v in rules.ListFields()}
    if set(present) - _SUPPORTED_NUMERIC:
        raise _Unsupported(f"{kind} rules {sorted(set(present) - _SUPPORTED_NUMERIC)}")
    low_name = "gt" if "gt" in present else "gte" if "gte" in present else None
    high_name = "lt" if "lt" in present else "lte" if "lte" in present else None
    low = present.get(low_name) if low_name else None
    high = present.get(high_name) if high_name else None
    words = {
        "gt": "greater than",
        "gte": "greater than or equal to",
        "lt": "less than",
        "lte": "less than or equal to",
    }
    if low_name and high_name:
        if low <= high:  # type: ignore[operator]
            rule = f"{kind}.{low_name}_{high_name}"
            message = f"must be {words[low_name]} {_fmt(low)} and {words[high_name]} {_fmt(high)}"  # type: ignore[arg-type]
        else:
            raise _Unsupported("exclusive ranges")
    elif low_name:
        rule, message = f"{kind}.{low_name}", f"must be {words[low_name]} {_fmt(low)}"  # type: ignore[arg-type]
    elif high_name:
        rule, message = f"{kind}.{high_name}", f"must be {words[high_name]} {_fmt(high)}"  # type: ignore[arg-type]
    else:
        return lambda value: None

    def check(value: Any) -> tuple[str, str] | None:
        if low_name == "gt" and not value > low:
            return rule, message
        if low_name == "gte" and not value >= low:
            return rule, message
        if high_name == "lt" and not value < high:
            return rule, message
        if high_name == "lte" and not value <= high:
            return rule, message
        return None

    return check


def _string_check(rules: Any) -> Callable[[Any], list[tuple[str, str]]]:
    present = {f.name: v for f, v in rules.ListFields()}
    if set(present) - _SUPPORTED_STRING:
        raise _Unsupported(f"string rules {sorted(set(present) - _SUPPORTED_STRING)}")
    min_len, max_len = present.get("min_len"), present.get("max_len")
    pattern = re.compile(present["pattern"]) if "pattern" in present else None
    allowed = list(present.get("in", ()))
    denied = list(present.get("not_in", ()))

    def check(value: str) -> list[tuple[str, str]]:
        out = []
        length = len(value)
        if min_len is not None and length < min_len:
            out.append(("string.min_len", f"must be at least {min_len} characters"))
        if max_len is not None and length > max_len:
            out.append(("string.max_len", f"must be at most {max_len} characters"))
        if pattern is not None and not pattern.search(value):
            out.append(("string.pattern", f"does not match regex pattern `{pattern.pattern}`"))
        if allowed and value not in allowed:
            out.append(("string.in", f"must be in list [{', '.join(allowed)}]"))
        if denied and value in denied:
            out.append(("string.not_in", f"must not be in list [{', '.join(denied)}]"))
        return out

    return check


def _bytes_check(rules: Any) -> Callable[[Any], list[tuple[str, str]]]:
    present = {f.name: v for f, v in rules.ListFields()}
    if set(present) - _SUPPORTED_BYTES:
        raise _Unsupported(f"bytes rules {sorted(set(present) - _SUPPORTED_BYTES)}")
    min_len, max_len = present.get("min_len"), present.get("max_len")

    def check(value: bytes) -> list[tuple[str, str]]:
        out = []
        if min_len is not None and len(value) < min_len:
            out.append(("bytes.min_len", f"must be at least {min_len} bytes"))
        if max_len is not None and len(value) > max_len:
            out.append(("bytes.max_len", f"must be at most {max_len} bytes"))
        return out

    return check


def _value_check(field: FieldDescriptor, rules: Any) -> Callable[[Any], list[tuple[str, str]]]:
    """Rules on one value of `field` (the field itself, or one repeated item)."""
    kind = rules.WhichOneof("type")
    if rules.cel or rules.cel_expression:
        raise _Unsupported("custom cel")
    if kind is None:
        return lambda value: []
    typed = getattr(rules, kind)
    if kind in _NUMERIC_KINDS:
        numeric = _numeric_check(kind, typed)
        return lambda value: [r] if (r := numeric(value)) else []
    if kind == "string":
        return _string_check(typed)
    if kind == "bytes":
        return _bytes_check(typed)
    if kind == "enum":
        present = {f.name for f, _ in typed.ListFields()}
        if present - {"defined_only"}:
            raise _Unsupported(f"enum rules {sorted(present)}")
        if not typed.defined_only:
            return lambda value: []
        assert field.enum_type is not None
        defined = {v.number for v in field.enum_type.values}
        return lambda value: (
            []
            if value in defined
            else [("enum.defined_only", "value must be one of the defined enum values")]
        )
    raise _Unsupported(f"{kind} rules")


def _is_zero(field: FieldDescriptor, value: Any) -> bool:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return False
    return not value


def _field_check(field: FieldDescriptor, rules: Any, nested: Check | None) -> Check:
    validate_pb2 = _rules_module()
    name = field.name
    if rules.ignore == validate_pb2.IGNORE_ALWAYS:
        return lambda message, prefix, out: None
    ignore_zero = rules.ignore == validate_pb2.IGNORE_IF_ZERO_VALUE
    required = rules.required
    is_repeated = field.is_repeated
    is_map = (
        is_repeated and field.message_type is not None and field.message_type.GetOptions().map_entry
    )
    if is_map:
        if rules.WhichOneof("type") is not None or rules.cel:
            raise _Unsupported("map rules")
        return lambda message, prefix, out: None
    tracks_presence = field.has_presence and not is_repeated

    if is_repeated:
        repeated = rules.repeated if rules.WhichOneof("type") == "repeated" else None
        if rules.WhichOneof("type") not in (None, "repeated") or rules.cel:
            raise _Unsupported("rules on a repeated field")
        present = {f.name: v for f, v in repeated.ListFields()} if repeated is not None else {}
        if set(present) - _SUPPORTED_REPEATED:
            raise _Unsupported(f"repeated rules {sorted(present)}")
        min_items, max_items = present.get("min_items"), present.get("max_items")
        unique = present.get("unique", False)
        item = _value_check(field, present["items"]) if "items" in present else None

        def check_repeated(message: Message, prefix: str, out: list[FieldViolation]) -> None:
            values = getattr(message, name)
            path = prefix + name
            if ignore_zero and not values:
                return
            if required and not values:
                out.append(FieldViolation(path, "value is required", "required"))
                return
            if min_items is not None and len(values) < min_items:
                out.append(
                    FieldViolation(
                        path,
                        f"value must contain at least {min_items} item(s)",
                        "repeated.min_items",
                    )
                )
            if max_items is not None and len(values) > max_items:
                out.append(
                    FieldViolation(
                        path,
                        f"value must contain no more than {max_items} item(s)",
                        "repeated.max_items",
                    )
                )
            if unique and len(set(values)) != len(values):
                out.append(
                    FieldViolation(
                        path, "repeated value must contain unique items", "repeated.unique"
                    )
                )
            for index, value in enumerate(values):
                if item is not None:
                    for rule, text in item(value):
                        out.append(FieldViolation(f"{path}[{index}]", text, rule))
                if nested is not None:
                    nested(value, f"{path}[{index}].", out)

        return check_repeated

    value_check = _value_check(field, rules)

    def check(message: Message, prefix: str, out: list[FieldViolation]) -> None:
        path = prefix + name
        if tracks_presence and not message.HasField(name):
            if required:
                out.append(FieldViolation(path, "value is required", "required"))
            return
        value = getattr(message, name)
        if ignore_zero and _is_zero(field, value):
            return
        if required and not tracks_presence and _is_zero(field, value):
            out.append(FieldViolation(path, "value is required", "required"))
            return
        for rule, text in value_check(value):
            out.append(FieldViolation(path, text, rule))
        if nested is not None:
            nested(value, path + ".", out)

    return check


class _Compiler:
    def __init__(self) -> None:
        self.compiled: dict[str, Check | None] = {}

    def message_check(self, descriptor: Descriptor, stack: tuple[str, ...] = ()) -> Check | None:
        """None when the message (and everything below it) has no rules."""
        name = descriptor.full_name
        if name in self.compiled:
            return self.compiled[name]
        if name in stack:
            raise _Unsupported("recursive message")  # protovalidate handles recursion
        validate_pb2 = _rules_module()
        options = descriptor.GetOptions()
        if options.HasExtension(validate_pb2.message):
            message_rules = options.Extensions[validate_pb2.message]
            if message_rules.cel or message_rules.oneof:
                raise _Unsupported("message rules")
        checks: list[Check] = []
        for oneof in descriptor.oneofs:
            oneof_options = oneof.GetOptions()
            if (
                oneof_options.HasExtension(validate_pb2.oneof)
                and oneof_options.Extensions[validate_pb2.oneof].required
            ):
                checks.append(_oneof_required(oneof.name))
        for field in descriptor.fields:
            nested = None
            target = field.message_type
            if (
                target is not None
                and not target.GetOptions().map_entry
                and not target.full_name.startswith("google.protobuf.")
            ):
                nested = self.message_check(target, (*stack, name))
            field_options = field.GetOptions()
            if field_options.HasExtension(validate_pb2.field):
                checks.append(
                    _field_check(field, field_options.Extensions[validate_pb2.field], nested)
                )
            elif nested is not None:
                checks.append(_nested_only(field, nested))
        result: Check | None = None
        if checks:

            def result(message: Message, prefix: str, out: list[FieldViolation]) -> None:
                for check in checks:
                    check(message, prefix, out)

        self.compiled[name] = result
        return result


def _oneof_required(oneof: str) -> Check:
    def check(message: Message, prefix: str, out: list[FieldViolation]) -> None:
        if message.WhichOneof(oneof) is None:
            out.append(
                FieldViolation(prefix + oneof, "exactly one field is required in oneof", "required")
            )

    return check


def _nested_only(field: FieldDescriptor, nested: Check) -> Check:
    name = field.name
    if field.is_repeated:

        def check_items(message: Message, prefix: str, out: list[FieldViolation]) -> None:
            for index, value in enumerate(getattr(message, name)):
                nested(value, f"{prefix}{name}[{index}].", out)

        return check_items

    def check(message: Message, prefix: str, out: list[FieldViolation]) -> None:
        if message.HasField(name):
            nested(getattr(message, name), f"{prefix}{name}.", out)

    return check


_COMPILER = _Compiler()
_FALLBACK: set[str] = set()


def uses_fallback(descriptor: Descriptor) -> bool:
    """Whether messages of this type are checked by protovalidate rather than compiled."""
    _compile(descriptor)
    return descriptor.full_name in _FALLBACK


def _compile(descriptor: Descriptor) -> Check | None:
    name = descriptor.full_name
    if name in _FALLBACK:
        return None
    try:
        return _COMPILER.message_check(descriptor)
    except _Unsupported:
        _FALLBACK.add(name)
        return None


def collect_violations(message: Message) -> list[FieldViolation] | None:
    """The message's violations, or None when protovalidate must check this type."""
    check = _compile(message.DESCRIPTOR)  # type: ignore[arg-type]
    if message.DESCRIPTOR.full_name in _FALLBACK:
        return None
    out: list[FieldViolation] = []
    if check is not None:
        check(message, "", out)
    return out
