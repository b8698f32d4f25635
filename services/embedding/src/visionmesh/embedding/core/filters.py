"""Payload filters: our own small model, a pure-Python evaluator, and its Qdrant translations.

A filter is a tree of conditions: `Match` (equality), `AnyOf` (in), `Range` (gt/gte/lt/lte)
and `Not`, combined with `And` / `Or`, for example
`And([Match("brand", "nike"), AnyOf("category", ["shoes", "boots"]), Not(Match("discontinued",
True)), Range("price", gte=20, lt=100)])`.

Semantics follow Qdrant's, so that `matches` (used to select catalogue products, and as the
oracle of the conformance suite) agrees with both backends:
- a key is a dotted path into nested objects (`attrs.color`);
- a field holding a list matches when any of its elements matches;
- an absent (or null) field fails the condition, never raises: `Not(Match(...))` therefore
  holds for a point without the field;
- types are not coerced: `True` is not `1`, the string `"1"` is not `1`, an integer condition
  does not match a float value, and `Range` only looks at numbers (never at booleans).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import qdrant_edge
from qdrant_client import models
from visionmesh.common.errors import InvalidArgument

__all__ = [
    "EDGE_BOOL_FIELD",
    "And",
    "AnyOf",
    "Filter",
    "Match",
    "Not",
    "Or",
    "Range",
    "edge_bool_tokens",
    "filter_from_json",
    "filter_keys",
    "filter_to_json",
    "matches",
    "to_edge",
    "to_qdrant",
]

Scalar: TypeAlias = str | int | bool

if TYPE_CHECKING:
    from visionmesh.embedding.core.vector_store import FieldType


@dataclass(frozen=True, slots=True)
class Match:
    """`key` equals `value` (a string, integer or boolean)."""

    key: str
    value: Scalar

    def __post_init__(self) -> None:
        _check_key(self.key)
        if not isinstance(self.value, str | int | bool):
            # Qdrant matches keywords, integers and booleans only; a float equality is a Range.
            raise InvalidArgument.for_field(
                "filter.match.value",
                f"must be a string, integer or boolean, not {type(self.value).__name__}",
            )


@dataclass(frozen=True, slots=True, init=False)
class AnyOf:
    """`key` equals one of `values`: all strings or all integers."""

    key: str
    values: tuple[str, ...] | tuple[int, ...]

    def __init__(self, key: str, values: Iterable[str] | Iterable[int]) -> None:
        _check_key(key)
        items = tuple(values)
        if not items:
            raise InvalidArgument.for_field("filter.any.values", "must not be empty")
        all_str = all(isinstance(v, str) for v in items)
        all_int = all(isinstance(v, int) and not isinstance(v, bool) for v in items)
        if not (all_str or all_int):
            raise InvalidArgument.for_field(
                "filter.any.values", "must be all strings or all integers"
            )
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "values", items)


@dataclass(frozen=True, slots=True)
class Range:
    """`key` is a number within the given bounds (each optional, at least one set)."""

    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None

    def __post_init__(self) -> None:
        _check_key(self.key)
        bounds = (self.gt, self.gte, self.lt, self.lte)
        if all(b is None for b in bounds):
            raise InvalidArgument.for_field("filter.range", "needs at least one bound")
        for bound in bounds:
            if bound is not None and (
                isinstance(bound, bool)
                or not isinstance(bound, int | float)
                or not math.isfinite(bound)
            ):
                raise InvalidArgument.for_field("filter.range", f"bound {bound!r} is not a number")


@dataclass(frozen=True, slots=True, init=False)
class And:
    """Every operand holds."""

    operands: tuple[Filter, ...]

    def __init__(self, operands: Iterable[Filter]) -> None:
        object.__setattr__(self, "operands", _operands(operands, "and"))


@dataclass(frozen=True, slots=True, init=False)
class Or:
    """At least one operand holds."""

    operands: tuple[Filter, ...]

    def __init__(self, operands: Iterable[Filter]) -> None:
        object.__setattr__(self, "operands", _operands(operands, "or"))


@dataclass(frozen=True, slots=True)
class Not:
    """The operand does not hold (true for a point that lacks the operand's field)."""

    operand: Filter


Filter: TypeAlias = Match | AnyOf | Range | And | Or | Not


def _check_key(key: str) -> None:
    if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
        raise InvalidArgument.for_field("filter.key", f"{key!r} is not a field path")


def _operands(operands: Iterable[Filter], name: str) -> tuple[Filter, ...]:
    # An empty And/Or has no agreed meaning across engines (Qdrant's empty `should` matches
    # everything); refusing it keeps every backend and the oracle in agreement.
    items = tuple(operands)
    if not items:
        raise InvalidArgument.for_field(f"filter.{name}", "needs at least one operand")
    return items


# ---------------------------------------------------------------- pure-Python evaluation


def _field_values(payload: Mapping[str, Any], key: str) -> list[Any]:
    """The values at a dotted path; a list contributes its elements; absent or null: none."""
    node: Any = payload
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return []
        node = node[part]
    if node is None:
        return []
    if isinstance(node, list):
        return [v for v in node if v is not None]
    return [node]


def _same(stored: Any, wanted: Scalar) -> bool:
    # `type(...) is` keeps bool, int and str apart (True == 1 in Python, not in Qdrant).
    return type(stored) is type(wanted) and stored == wanted


def _in_range(value: Any, cond: Range) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return (
        (cond.gt is None or value > cond.gt)
        and (cond.gte is None or value >= cond.gte)
        and (cond.lt is None or value < cond.lt)
        and (cond.lte is None or value <= cond.lte)
    )


def matches(filter: Filter | None, payload: Mapping[str, Any]) -> bool:
    """Whether `payload` satisfies `filter` (None matches everything)."""
    match filter:
        case None:
            return True
        case Match(key=key, value=value):
            return any(_same(v, value) for v in _field_values(payload, key))
        case AnyOf(key=key, values=values):
            return any(_same(v, w) for v in _field_values(payload, key) for w in values)
        case Range(key=key):
            return any(_in_range(v, filter) for v in _field_values(payload, key))
        case And(operands=operands):
            return all(matches(op, payload) for op in operands)
        case Or(operands=operands):
            return any(matches(op, payload) for op in operands)
        case Not(operand=operand):
            return not matches(operand, payload)
    raise TypeError(f"not a filter: {filter!r}")


def filter_keys(filter: Filter | None) -> set[str]:
    """Every payload key a filter reads (to check that they are indexed)."""
    match filter:
        case None:
            return set()
        case Match(key=key) | AnyOf(key=key) | Range(key=key):
            return {key}
        case And(operands=operands) | Or(operands=operands):
            return set().union(*(filter_keys(op) for op in operands))
        case Not(operand=operand):
            return filter_keys(operand)
    raise TypeError(f"not a filter: {filter!r}")


# ---------------------------------------------------------------- translations

EDGE_BOOL_FIELD = "_vm_bools"
"""Edge-only shadow field: qdrant-edge-py 0.9's `MatchValue(True)` turns the boolean into the
integer 1 (`MatchValue(True).value == 1`), which never matches a stored `true`. The Edge store
therefore writes every boolean it finds as a keyword token `"<path>=true"` in this field, and
`Match(key, bool)` is translated to a match on the token. Drop it once the binding keeps bools.
"""


def edge_bool_tokens(payload: Mapping[str, Any], prefix: str = "") -> list[str]:
    """`"<dotted path>=true|false"` for each boolean reachable through objects (and lists)."""
    tokens: list[str] = []
    for key, value in payload.items():
        path = f"{prefix}{key}"
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, bool):
                tokens.append(f"{path}={'true' if item else 'false'}")
        if isinstance(value, Mapping):
            tokens.extend(edge_bool_tokens(value, f"{path}."))
    return sorted(set(tokens))


def to_edge(filter: Filter) -> qdrant_edge.Filter:
    """The Qdrant Edge filter: And -> must, Or -> should, Not -> must_not, nested as filters."""
    match filter:
        case Match() | AnyOf() | Range():
            return qdrant_edge.Filter(must=[_edge_condition(filter)])
        case And(operands=operands):
            return qdrant_edge.Filter(must=[_edge_clause(op) for op in operands])
        case Or(operands=operands):
            return qdrant_edge.Filter(should=[_edge_clause(op) for op in operands])
        case Not(operand=operand):
            return qdrant_edge.Filter(must_not=[_edge_clause(operand)])
    raise TypeError(f"not a filter: {filter!r}")


def _edge_clause(filter: Filter) -> qdrant_edge.FieldCondition | qdrant_edge.Filter:
    if isinstance(filter, Match | AnyOf | Range):
        return _edge_condition(filter)
    return to_edge(filter)


def _edge_condition(cond: Match | AnyOf | Range) -> qdrant_edge.FieldCondition:
    match cond:
        case Match(key=key, value=bool(value)):
            token = f"{key}={'true' if value else 'false'}"
            return qdrant_edge.FieldCondition(EDGE_BOOL_FIELD, match=qdrant_edge.MatchValue(token))
        case Match(key=key, value=value):
            return qdrant_edge.FieldCondition(key, match=qdrant_edge.MatchValue(value))
        case AnyOf(key=key, values=values):
            return qdrant_edge.FieldCondition(key, match=qdrant_edge.MatchAny(_listed(values)))
        case Range(key=key, gt=gt, gte=gte, lt=lt, lte=lte):
            return qdrant_edge.FieldCondition(
                key, range=qdrant_edge.RangeFloat(gte=gte, gt=gt, lte=lte, lt=lt)
            )


def _listed(values: tuple[str, ...] | tuple[int, ...]) -> list[str] | list[int]:
    if all(isinstance(v, str) for v in values):
        return [str(v) for v in values]
    return [int(v) for v in values]


def to_qdrant(filter: Filter) -> models.Filter:
    """The qdrant-client filter, shaped exactly like `to_edge`'s."""
    match filter:
        case Match() | AnyOf() | Range():
            return models.Filter(must=[_qdrant_condition(filter)])
        case And(operands=operands):
            return models.Filter(must=[_qdrant_clause(op) for op in operands])
        case Or(operands=operands):
            return models.Filter(should=[_qdrant_clause(op) for op in operands])
        case Not(operand=operand):
            return models.Filter(must_not=[_qdrant_clause(operand)])
    raise TypeError(f"not a filter: {filter!r}")


def _qdrant_clause(filter: Filter) -> models.FieldCondition | models.Filter:
    if isinstance(filter, Match | AnyOf | Range):
        return _qdrant_condition(filter)
    return to_qdrant(filter)


def _qdrant_condition(cond: Match | AnyOf | Range) -> models.FieldCondition:
    match cond:
        case Match(key=key, value=value):
            return models.FieldCondition(key=key, match=models.MatchValue(value=value))
        case AnyOf(key=key, values=values):
            return models.FieldCondition(key=key, match=models.MatchAny(any=_listed(values)))
        case Range(key=key, gt=gt, gte=gte, lt=lt, lte=lte):
            return models.FieldCondition(
                key=key, range=models.Range(gt=gt, gte=gte, lt=lt, lte=lte)
            )


# ---------------------------------------------------------------- JSON form (API, CLI, jobs)


def filter_to_json(filter: Filter) -> dict[str, Any]:
    """`{"match": {"key", "value"}}`, `{"any": {"key", "values"}}`, `{"range": {"key", ...}}`,
    `{"and": [...]}`, `{"or": [...]}`, `{"not": {...}}`."""
    match filter:
        case Match(key=key, value=value):
            return {"match": {"key": key, "value": value}}
        case AnyOf(key=key, values=values):
            return {"any": {"key": key, "values": list(values)}}
        case Range(key=key, gt=gt, gte=gte, lt=lt, lte=lte):
            bounds = {"gt": gt, "gte": gte, "lt": lt, "lte": lte}
            return {"range": {"key": key, **{k: v for k, v in bounds.items() if v is not None}}}
        case And(operands=operands):
            return {"and": [filter_to_json(op) for op in operands]}
        case Or(operands=operands):
            return {"or": [filter_to_json(op) for op in operands]}
        case Not(operand=operand):
            return {"not": filter_to_json(operand)}
    raise TypeError(f"not a filter: {filter!r}")


def filter_from_json(data: Any, *, field: str = "filter") -> Filter:
    """Parse `filter_to_json`'s form; errors are InvalidArgument naming the path in `data`."""
    if not isinstance(data, Mapping) or len(data) != 1:
        raise InvalidArgument.for_field(
            field, "must be an object with one of match, any, range, and, or, not"
        )
    ((op, body),) = data.items()
    path = f"{field}.{op}"
    if op in ("and", "or"):
        if not isinstance(body, list):
            raise InvalidArgument.for_field(path, "must be a list of filters")
        operands = [filter_from_json(item, field=f"{path}[{i}]") for i, item in enumerate(body)]
        return _build(path, lambda: And(operands) if op == "and" else Or(operands))
    if op == "not":
        return Not(filter_from_json(body, field=path))
    if op not in ("match", "any", "range"):
        raise InvalidArgument.for_field(
            field, f"unknown operator {op!r}; expected match, any, range, and, or, not"
        )
    if not isinstance(body, Mapping) or not isinstance(body.get("key"), str):
        raise InvalidArgument.for_field(path, "must be an object with a string key")
    key: str = body["key"]
    if op == "match":
        value: Any = body.get("value")  # checked by Match
        return _build(path, lambda: Match(key, value))
    if op == "any":
        values = body.get("values")
        if not isinstance(values, list):
            raise InvalidArgument.for_field(f"{path}.values", "must be a list")
        return _build(path, lambda: AnyOf(key, values))
    unknown = set(body) - {"key", "gt", "gte", "lt", "lte"}
    if unknown:
        raise InvalidArgument.for_field(path, f"unknown bounds {sorted(unknown)}")
    return _build(
        path,
        lambda: Range(
            key, gt=body.get("gt"), gte=body.get("gte"), lt=body.get("lt"), lte=body.get("lte")
        ),
    )


def _build(path: str, factory: Callable[[], Filter]) -> Filter:
    """Run a constructor, re-anchoring its generic field name ("filter.any.values") to `path`."""
    try:
        return factory()
    except InvalidArgument as exc:
        description = exc.field_violations[0].description if exc.field_violations else exc.message
        raise InvalidArgument.for_field(path, description) from exc


def index_types(filter: Filter | None) -> dict[str, FieldType]:
    """The payload index each key a filter reads wants: keyword for strings, integer or
    bool for those values, float for ranges (the first use of a key decides)."""
    found: dict[str, FieldType] = {}

    def visit(node: Filter | None) -> None:
        match node:
            case None:
                return
            case Match(key=key, value=value):
                kind: FieldType = (
                    "bool"
                    if isinstance(value, bool)
                    else "integer"
                    if isinstance(value, int)
                    else "keyword"
                )
                found.setdefault(key, kind)
            case AnyOf(key=key, values=values):
                found.setdefault(
                    key, "integer" if values and isinstance(values[0], int) else "keyword"
                )
            case Range(key=key):
                found.setdefault(key, "float")
            case And(operands=operands) | Or(operands=operands):
                for operand in operands:
                    visit(operand)
            case Not(operand=operand):
                visit(operand)

    visit(filter)
    return found
