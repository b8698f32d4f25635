"""The filter model: its Python evaluator's semantics, validation, JSON form and translations.

Agreement with both engines on random payloads is in test_vector_store.py; these pin the
semantics themselves and the shape of each translation.
"""

from __future__ import annotations

import pytest
import qdrant_edge as qe
from qdrant_client import models
from visionmesh.common.errors import InvalidArgument
from visionmesh.embedding.core.filters import (
    EDGE_BOOL_FIELD,
    And,
    AnyOf,
    Filter,
    Match,
    Not,
    Or,
    Range,
    edge_bool_tokens,
    filter_from_json,
    filter_keys,
    filter_to_json,
    matches,
    to_edge,
    to_qdrant,
)

NIKE_SHOES = And([Match("brand", "nike"), AnyOf("category", ["shoes", "boots"])])


@pytest.mark.parametrize(
    ("flt", "payload", "expected"),
    [
        (NIKE_SHOES, {"brand": "nike", "category": "boots"}, True),
        (NIKE_SHOES, {"brand": "nike", "category": "hats"}, False),
        (NIKE_SHOES, {"brand": "nike"}, False),  # absent: no match, no error
        (NIKE_SHOES, {"brand": "nike", "category": ["hats", "shoes"]}, True),  # any element
        (Not(Match("discontinued", True)), {}, True),
        (Not(Match("discontinued", True)), {"discontinued": True}, False),
        (Match("discontinued", True), {"discontinued": 1}, False),
        (Match("stock", 1), {"stock": True}, False),
        (Match("stock", 1), {"stock": 1.0}, False),
        (Match("sku", "1"), {"sku": 1}, False),
        (Match("attrs.color", "red"), {"attrs": {"color": "red"}}, True),
        (Match("attrs.color", "red"), {"attrs": "red"}, False),
        (Match("brand", "nike"), {"brand": None}, False),
        (Range("price", gte=10, lt=20), {"price": 10}, True),
        (Range("price", gte=10, lt=20), {"price": 20.0}, False),
        (Range("price", gt=0), {"price": "5"}, False),
        (Range("price", gt=0), {"price": True}, False),
        (Range("price", gt=0), {"price": [-1, 3]}, True),
        (Or([Match("a", 1), Match("b", 2)]), {"b": 2}, True),
        (Or([Match("a", 1), Match("b", 2)]), {}, False),
        (None, {}, True),
    ],
)
def test_matches(flt: Filter | None, payload: dict[str, object], expected: bool) -> None:
    assert matches(flt, payload) is expected


@pytest.mark.parametrize(
    "build",
    [
        lambda: And([]),
        lambda: Or([]),
        lambda: AnyOf("k", []),
        lambda: AnyOf("k", ["a", 1]),  # type: ignore[arg-type]
        lambda: AnyOf("k", [True]),
        lambda: Match("k", 1.5),  # type: ignore[arg-type]
        lambda: Match("", "x"),
        lambda: Match("a..b", "x"),
        lambda: Range("k"),
        lambda: Range("k", gt=float("nan")),
        lambda: Range("k", gt=True),
    ],
)
def test_invalid_filters_are_refused(build: object) -> None:
    with pytest.raises(InvalidArgument):
        build()  # type: ignore[operator]


def test_json_round_trip_and_errors_name_the_path() -> None:
    flt = And(
        [
            NIKE_SHOES,
            Not(Match("discontinued", True)),
            Or([Range("price", gte=10.5, lt=100), AnyOf("stock", [1, 2])]),
        ]
    )
    assert filter_from_json(filter_to_json(flt)) == flt
    assert filter_to_json(Range("p", lt=3)) == {"range": {"key": "p", "lt": 3}}
    with pytest.raises(InvalidArgument) as info:
        filter_from_json(
            {"and": [{"match": {"key": "a", "value": 1}}, {"any": {"key": "b", "values": []}}]}
        )
    assert info.value.field_violations[0].field == "filter.and[1].any"
    with pytest.raises(InvalidArgument) as info:
        filter_from_json({"xor": []}, field="spec.filter")
    assert info.value.field_violations[0].field == "spec.filter"
    with pytest.raises(InvalidArgument):
        filter_from_json({"range": {"key": "p", "between": [1, 2]}})


def test_filter_keys() -> None:
    assert filter_keys(And([NIKE_SHOES, Not(Range("price", lt=1))])) == {
        "brand",
        "category",
        "price",
    }


def test_qdrant_translation_shape() -> None:
    flt = And([Match("brand", "nike"), Or([Range("price", lt=5), Not(AnyOf("stock", [1]))])])
    assert to_qdrant(flt) == models.Filter(
        must=[
            models.FieldCondition(key="brand", match=models.MatchValue(value="nike")),
            models.Filter(
                should=[
                    models.FieldCondition(key="price", range=models.Range(lt=5)),
                    models.Filter(
                        must_not=[
                            models.FieldCondition(key="stock", match=models.MatchAny(any=[1]))
                        ]
                    ),
                ]
            ),
        ]
    )
    assert to_qdrant(Match("flag", True)) == models.Filter(
        must=[models.FieldCondition(key="flag", match=models.MatchValue(value=True))]
    )


def test_edge_translation_shape() -> None:
    edge = to_edge(
        And([Match("brand", "nike"), Or([Range("price", lt=5), Not(Match("flag", True))])])
    )
    brand, either = edge.must or []
    assert isinstance(brand, qe.FieldCondition) and brand.key == "brand"
    assert isinstance(brand.match, qe.MatchValue) and brand.match.value == "nike"
    assert isinstance(either, qe.Filter)
    price, negated = either.should or []
    assert isinstance(price, qe.FieldCondition) and price.range is not None and price.range.lt == 5
    assert isinstance(negated, qe.Filter)
    (flag,) = negated.must_not or []
    # Booleans go through the token field (the binding turns MatchValue(True) into 1).
    assert isinstance(flag, qe.FieldCondition) and flag.key == EDGE_BOOL_FIELD
    assert isinstance(flag.match, qe.MatchValue) and flag.match.value == "flag=true"


def test_edge_bool_tokens() -> None:
    payload = {"a": True, "b": [False, 1, True], "c": {"d": False, "e": {"f": True}}, "g": 1}
    assert edge_bool_tokens(payload) == ["a=true", "b=false", "b=true", "c.d=false", "c.e.f=true"]
