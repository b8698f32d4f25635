"""The contract's MetadataFilter as our filter model (`visionmesh.embedding.core.filters`).

All parts given must hold: `conditions` (AND), `any` (OR), `none` (NOT any of them),
`all_of` (nested AND) and `any_of` (nested OR). An empty filter, or an absent one, matches
everything and becomes None, so that "no filter" never reaches a store as a condition.
Errors are InvalidArgument naming the field path in the request, e.g.
`filter.any_of[1].conditions[0].range`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.common.errors import InvalidArgument
from visionmesh.embedding.core.filters import And, AnyOf, Filter, Match, Not, Or, Range

__all__ = ["condition_from_proto", "filter_from_proto"]


def filter_from_proto(
    message: embedding_pb2.MetadataFilter | None, *, field: str = "filter"
) -> Filter | None:
    """The filter of a MetadataFilter; None when it is absent or empty (matches everything)."""
    if message is None:
        return None
    parts: list[Filter] = []
    parts.extend(
        condition_from_proto(c, field=f"{field}.conditions[{i}]")
        for i, c in enumerate(message.conditions)
    )
    if message.any:
        parts.append(
            _either(
                [
                    condition_from_proto(c, field=f"{field}.any[{i}]")
                    for i, c in enumerate(message.any)
                ]
            )
        )
    if message.none:
        excluded = [
            condition_from_proto(c, field=f"{field}.none[{i}]") for i, c in enumerate(message.none)
        ]
        parts.append(Not(_either(excluded)))
    for i, nested in enumerate(message.all_of):
        inner = filter_from_proto(nested, field=f"{field}.all_of[{i}]")
        if inner is not None:
            parts.append(inner)
    if message.any_of:
        alternatives = [
            filter_from_proto(nested, field=f"{field}.any_of[{i}]")
            for i, nested in enumerate(message.any_of)
        ]
        # An empty alternative matches everything, and so does the OR that holds it.
        if all(alternative is not None for alternative in alternatives):
            parts.append(_either([a for a in alternatives if a is not None]))
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else And(parts)


def condition_from_proto(condition: embedding_pb2.FilterCondition, *, field: str) -> Filter:
    """One FilterCondition: equality (string, int, bool), IN (strings, ints) or a range."""
    key = condition.key
    which = condition.WhichOneof("value")
    if which is None:
        raise InvalidArgument.for_field(
            field, "needs a value: string, int, bool, in_strings, in_ints or range"
        )
    _build(f"{field}.key", lambda: Match(key, ""))  # the key alone, named as such
    if which == "string_value":
        return Match(key, condition.string_value)
    if which == "int_value":
        return Match(key, condition.int_value)
    if which == "bool_value":
        return Match(key, condition.bool_value)
    if which == "in_strings":
        strings = list(condition.in_strings.values)
        return _build(f"{field}.in_strings", lambda: AnyOf(key, strings))
    if which == "in_ints":
        ints = list(condition.in_ints.values)
        return _build(f"{field}.in_ints", lambda: AnyOf(key, ints))
    bounds = condition.range

    def bound(name: str) -> float | None:
        return getattr(bounds, name) if bounds.HasField(name) else None  # type: ignore[no-any-return]

    return _build(
        f"{field}.range",
        lambda: Range(key, gt=bound("gt"), gte=bound("gte"), lt=bound("lt"), lte=bound("lte")),
    )


def _either(operands: Sequence[Filter]) -> Filter:
    return operands[0] if len(operands) == 1 else Or(operands)


def _build(path: str, factory: Callable[[], Filter]) -> Filter:
    """Run a filter constructor, naming `path` instead of its generic field ("filter.range")."""
    try:
        return factory()
    except InvalidArgument as exc:
        description = exc.field_violations[0].description if exc.field_violations else exc.message
        raise InvalidArgument.for_field(path, description) from exc
