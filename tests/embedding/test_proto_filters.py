"""MetadataFilter messages as filters: every construct, nesting, and errors naming the field."""

from __future__ import annotations

import pytest
from google.protobuf import json_format
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.common.errors import InvalidArgument
from visionmesh.embedding.core.filters import And, AnyOf, Match, Not, Or, Range, matches
from visionmesh.embedding.core.proto_filters import filter_from_proto

MetadataFilter = embedding_pb2.MetadataFilter
Condition = embedding_pb2.FilterCondition


def _parse(data: dict[str, object]) -> MetadataFilter:
    return json_format.ParseDict(data, MetadataFilter())


def test_absent_or_empty_filters_match_everything() -> None:
    assert filter_from_proto(None) is None
    assert filter_from_proto(MetadataFilter()) is None
    assert filter_from_proto(_parse({"allOf": [{}], "anyOf": [{}, {"conditions": []}]})) is None


def test_the_issue_example_brand_nike_and_category_in_shoes_boots() -> None:
    message = _parse(
        {
            "conditions": [
                {"key": "brand", "stringValue": "nike"},
                {"key": "category", "inStrings": {"values": ["shoes", "boots"]}},
            ]
        }
    )
    parsed = filter_from_proto(message)
    assert parsed == And([Match("brand", "nike"), AnyOf("category", ["shoes", "boots"])])
    assert matches(parsed, {"brand": "nike", "category": "boots"})
    assert not matches(parsed, {"brand": "nike", "category": "hats"})
    assert not matches(parsed, {"brand": "acme", "category": "shoes"})


def test_each_condition_kind() -> None:
    def one(condition: dict[str, object]) -> object:
        return filter_from_proto(_parse({"conditions": [{"key": "k", **condition}]}))

    assert one({"stringValue": "x"}) == Match("k", "x")
    assert one({"intValue": "7"}) == Match("k", 7)
    assert one({"boolValue": True}) == Match("k", True)
    assert one({"boolValue": False}) == Match("k", False)
    assert one({"inInts": {"values": ["1", "2"]}}) == AnyOf("k", [1, 2])
    assert one({"range": {"gte": 2.5, "lt": 10}}) == Range("k", gte=2.5, lt=10.0)
    # A bound of zero is a bound: presence, not truthiness, decides.
    assert one({"range": {"gt": 0}}) == Range("k", gt=0.0)
    assert one({"range": {"lte": 0}}) == Range("k", lte=0.0)


def test_any_none_and_nested_parts_combine_with_and() -> None:
    message = _parse(
        {
            "conditions": [{"key": "brand", "stringValue": "nike"}],
            "any": [
                {"key": "category", "stringValue": "shoes"},
                {"key": "price", "range": {"lt": 20}},
            ],
            "none": [{"key": "discontinued", "boolValue": True}],
            "allOf": [{"conditions": [{"key": "attributes.colour", "stringValue": "red"}]}],
            "anyOf": [
                {"conditions": [{"key": "size", "intValue": "42"}]},
                {"any": [{"key": "size", "intValue": "43"}, {"key": "size", "intValue": "44"}]},
            ],
        }
    )
    expected = And(
        [
            Match("brand", "nike"),
            Or([Match("category", "shoes"), Range("price", lt=20.0)]),
            Not(Match("discontinued", True)),
            Match("attributes.colour", "red"),
            Or([Match("size", 42), Or([Match("size", 43), Match("size", 44)])]),
        ]
    )
    parsed = filter_from_proto(message)
    assert parsed == expected
    base = {"brand": "nike", "category": "hats", "price": 10, "attributes": {"colour": "red"}}
    assert matches(parsed, {**base, "size": 44})
    assert not matches(parsed, {**base, "size": 45})
    assert not matches(parsed, {**base, "size": 42, "discontinued": True})
    # NOT holds for a point without the field.
    assert matches(parsed, {**base, "size": 42, "discontinued": False})
    assert not matches(parsed, {**base, "price": 30, "size": 42})


def test_an_empty_alternative_makes_any_of_match_everything() -> None:
    message = _parse(
        {"anyOf": [{"conditions": [{"key": "a", "stringValue": "x"}]}, {}]},
    )
    assert filter_from_proto(message) is None


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"conditions": [{"key": "c", "inStrings": {}}]}, "filter.conditions[0].in_strings"),
        ({"any": [{"key": "c", "inInts": {}}]}, "filter.any[0].in_ints"),
        (
            {"anyOf": [{}, {"conditions": [{"key": "p", "range": {}}]}]},
            "filter.any_of[1].conditions[0].range",
        ),
        (
            {"allOf": [{"none": [{"key": "a", "stringValue": "x"}, {"key": "b"}]}]},
            "filter.all_of[0].none[1]",
        ),
        ({"conditions": [{"key": "a..b", "stringValue": "x"}]}, "filter.conditions[0].key"),
        ({"conditions": [{"key": "", "intValue": "1"}]}, "filter.conditions[0].key"),
    ],
)
def test_errors_name_the_field_path(data: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgument) as caught:
        filter_from_proto(_parse(data))
    assert [v.field for v in caught.value.field_violations] == [field]


def test_a_custom_root_field_prefixes_the_paths() -> None:
    message = _parse({"conditions": [{"key": "c", "range": {}}]})
    with pytest.raises(InvalidArgument) as caught:
        filter_from_proto(message, field="spec.metadata_filter.filter")
    assert caught.value.field_violations[0].field == (
        "spec.metadata_filter.filter.conditions[0].range"
    )
