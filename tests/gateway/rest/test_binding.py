"""Request binding beyond the real contracts: nested/multi-segment paths, body fields, WKTs."""

from __future__ import annotations

import base64

import httpx
import pytest


async def test_multi_segment_variable_binds_the_whole_resource_name(
    client: httpx.AsyncClient,
) -> None:
    response = await client.get("/v1/shelves/s1/books/b%2F2")
    assert response.status_code == 200
    book = response.json()
    # `{name=shelves/*/books/*}`: the value keeps its slashes; an escaped one stays escaped.
    assert book["name"] == "shelves/s1/books/b%2F2"
    assert book["pageCount"] == "412"
    assert book["genre"] == "GENRE_FICTION"
    assert book["labels"] == {}
    assert "related" not in book


async def test_double_wildcard_and_repeated_and_scalar_query_parameters(
    client: httpx.AsyncClient,
) -> None:
    cursor = base64.urlsafe_b64encode(b"\x00\xffpage-2").decode().rstrip("=")
    response = await client.get(
        "/v1/shelves/top/search/a/b/c",
        params=[
            ("authors", "Le Guin"),
            ("authors", "Herbert"),
            ("available", "true"),
            ("maxPrice", "12.5"),
            ("cursor", cursor),
            ("limit", "10"),
            ("filter.genres", "GENRE_POETRY"),
            ("filter.genres", "1"),
            ("filter.since", "2024-01-02T03:04:05Z"),
            ("filter.minPages", "100"),
        ],
    )
    assert response.status_code == 200, response.text
    echo = response.json()["echo"]
    assert echo["shelf"] == "top"
    assert echo["path"] == "a/b/c"
    assert echo["authors"] == ["Le Guin", "Herbert"]
    assert echo["available"] is True
    assert echo["maxPrice"] == 12.5
    assert base64.b64decode(echo["cursor"]) == b"\x00\xffpage-2"
    assert echo["limit"] == 10
    assert echo["filter"] == {
        "genres": ["GENRE_POETRY", "GENRE_FICTION"],
        "since": "2024-01-02T03:04:05Z",
        "minPages": 100,
    }


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("available=maybe", "available"),
        ("maxPrice=cheap", "max_price"),
        ("limit=-1", "limit"),
        ("cursor=***", "cursor"),
        ("filter.since=yesterday", "filter.since"),
        ("filter.minPages=lots", "filter.min_pages"),
        ("filter.genres=GENRE_JAZZ", "filter.genres"),
    ],
)
async def test_bad_typed_query_values_name_the_field(
    client: httpx.AsyncClient, violations, query: str, field: str
) -> None:
    response = await client.get(f"/v1/shelves/top/search/x?{query}")
    assert response.status_code == 400
    assert violations(response.json()) == [field]


async def test_body_field_binding_with_nested_path_variable_and_response_body(
    client: httpx.AsyncClient,
) -> None:
    response = await client.patch(
        "/v1/books/b1?validateOnly=true",
        json={"name": "ignored: the path wins", "title": "Dune", "pageCount": "412"},
    )
    assert response.status_code == 200, response.text
    # response_body: "book" — the body is the Book itself, not the wrapping response.
    assert response.json()["name"] == "b1"
    assert response.json()["title"] == "Dune"


async def test_additional_bindings_are_routes_too(client: httpx.AsyncClient) -> None:
    response = await client.put("/v1/books/b2", json={"title": "Emma"})
    assert response.status_code == 200
    assert response.json() == {
        **response.json(),
        "name": "b2",
        "title": "Emma",
    }


async def test_unknown_field_inside_a_body_field_is_named_with_its_prefix(
    client: httpx.AsyncClient, violations
) -> None:
    response = await client.patch("/v1/books/b1", json={"title": "x", "author": "y"})
    assert response.status_code == 400
    assert violations(response.json()) == ["book.author"]


async def test_query_cannot_set_fields_owned_by_the_path_or_body(
    client: httpx.AsyncClient, violations
) -> None:
    response = await client.patch("/v1/books/b1?book.title=x", json={})
    assert response.status_code == 400
    assert violations(response.json()) == ["book.title"]
    response = await client.get("/v1/shelves/top/search/x?shelf=other")
    assert response.status_code == 400
    assert violations(response.json()) == ["shelf"]
