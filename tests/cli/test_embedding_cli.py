"""`collections`, `embed`, `search`, `match` and `embedding-job`: the --filter grammar and
the job spec the options make, directly; the commands against a real in-process gateway
whose embedding service is down (job intake pins and refuses before asking it)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import typer
from google.protobuf import json_format
from typer.testing import CliRunner, Result
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.cli.app import app
from visionmesh.cli.commands.embedding import embedding_spec, parse_filters
from visionmesh.cli.synth import make_catalog_dataset, zip_dataset
from visionmesh.common.embedded import NatsServer

from tests.gateway.conftest import GatewayFactory, GatewayHarness, dead_address
from tests.gateway.helpers import detect_zip, upload_dataset

# -- pure parts ---------------------------------------------------------------------------


def test_filters_and_their_conditions() -> None:
    parsed = parse_filters(
        [
            "brand=nike",
            "category=shoes,boots",
            "stock=3",
            "sizes=40,41",
            "active=true",
            "price>=10",
            "price<99.5",
            "weight>0",
            "rating<=4",
            "!brand=adidas",
            "ratio=0.5",
            "attributes.colour = red ",
        ]
    )
    assert parsed == {
        "conditions": [
            {"key": "brand", "stringValue": "nike"},
            {"key": "category", "inStrings": {"values": ["shoes", "boots"]}},
            {"key": "stock", "intValue": "3"},
            {"key": "sizes", "inInts": {"values": ["40", "41"]}},
            {"key": "active", "boolValue": True},
            {"key": "price", "range": {"gte": 10.0}},
            {"key": "price", "range": {"lt": 99.5}},
            {"key": "weight", "range": {"gt": 0.0}},
            {"key": "rating", "range": {"lte": 4.0}},
            {"key": "ratio", "range": {"gte": 0.5, "lte": 0.5}},
            {"key": "attributes.colour", "stringValue": "red"},
        ],
        "none": [{"key": "brand", "stringValue": "adidas"}],
    }
    # It is the contract's MetadataFilter, field for field.
    message = json_format.ParseDict(parsed, embedding_pb2.MetadataFilter())
    assert message.conditions[3].in_ints.values == [40, 41]
    assert message.none[0].string_value == "adidas"
    assert parse_filters([]) == parse_filters(None) == {}
    for bad in ("brand", "=nike", "price>=cheap", "tags=,", "!"):
        with pytest.raises(typer.BadParameter):
            parse_filters([bad])


def test_embedding_job_options_make_one_source() -> None:
    routing = {"defaultCollection": "products", "createMissing": True}
    assert embedding_spec(collection="products", catalog="ds-1") == {
        "routing": routing,
        "metadataFilter": {"datasetId": "ds-1"},
    }
    assert embedding_spec(
        collection="products", catalog="ds-1", filters=["brand=nike"], model="dinov2_vits14"
    ) == {
        "routing": routing,
        "metadataFilter": {
            "datasetId": "ds-1",
            "filter": {"conditions": [{"key": "brand", "stringValue": "nike"}]},
        },
        "model": "dinov2_vits14",
    }
    assert embedding_spec(collection="products", catalog="ds-1", products="p1, p2,") == {
        "routing": routing,
        "products": {"datasetId": "ds-1", "productIds": ["p1", "p2"]},
    }
    assert embedding_spec(collection="c", dataset="ds-2", create_missing=False) == {
        "routing": {"defaultCollection": "c", "createMissing": False},
        "dataset": {"datasetId": "ds-2"},
    }
    for spec in (
        embedding_spec(collection="products", catalog="ds-1", products="p1"),
        embedding_spec(collection="c", dataset="ds-2"),
    ):
        json_format.ParseDict(spec, embedding_pb2.EmbeddingJobSpec())
    for wrong in (
        {},
        {"catalog": "a", "dataset": "b"},
        {"dataset": "b", "products": "p1"},
        {"dataset": "b", "filters": ["x=1"]},
        {"catalog": "a", "products": "p1", "filters": ["x=1"]},
        {"catalog": "a", "products": ","},
    ):
        with pytest.raises(typer.BadParameter):
            embedding_spec(collection="c", **wrong)


# -- against a gateway --------------------------------------------------------------------


class Cli:
    def __init__(self, harness: GatewayHarness, runner: CliRunner) -> None:
        self.gateway = harness.rest_url
        self.runner = runner

    async def __call__(self, *args: str) -> Result:
        argv = ["--gateway", self.gateway, *args]
        return await asyncio.to_thread(self.runner.invoke, app, argv)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_commands_reach_the_gateway_and_name_what_is_wrong(
    make_gateway: GatewayFactory,
    nats_server: NatsServer,
    database_url: str,
    runner: CliRunner,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    harness = await make_gateway(
        nats_url=nats_server.url, database_url=database_url, embedding_addr=dead_address()
    )
    token = await harness.signup_and_login()
    monkeypatch.setenv("VISIONMESH_TOKEN", token)
    catalog = make_catalog_dataset(tmp_path / "cat", n_products=4, renders=2, imgsz=48, seed=2)
    async with harness.http(token) as client:
        uploaded = await upload_dataset(client, zip_dataset(catalog.root, tmp_path / "cat.zip"))
        shapes = await upload_dataset(client, detect_zip(tmp_path), name="shapes")
    catalog_id, shapes_id = uploaded["dataset"]["id"], shapes["dataset"]["id"]
    cli = Cli(harness, runner)
    image = _first_image(catalog.root)

    def refused(result: Result, *needles: str) -> None:
        assert result.exit_code != 0, result.output
        for needle in needles:
            assert needle in result.output, result.output

    refused(
        await cli("embedding-job", "--collection", "products", "--catalog", "nope"),
        "spec.metadata_filter.dataset_id",
        "NOT_FOUND",
    )
    refused(
        await cli(
            "embedding-job", "--collection", "products", "--catalog", shapes_id,
            "--products", "p0000",
        ),
        "spec.products.dataset_id",
        "not a product catalog",
    )  # fmt: skip
    refused(await cli("embedding-job", "--collection", "products", "--catalog", catalog_id,
                      "--filter", "brand=nike"), "UNAVAILABLE")  # fmt: skip
    refused(await cli("embedding-job", "--collection", "p", "--dataset", shapes_id), "UNAVAILABLE")
    refused(await cli("collections", "list"), "UNAVAILABLE")
    refused(await cli("embed", str(image)), "UNAVAILABLE")
    refused(await cli("search", str(image), "-c", "products", "-f", "brand=nike"), "UNAVAILABLE")
    refused(await cli("match", str(image), "-c", "products", "--detector", "dets"), "UNAVAILABLE")
    refused(await cli("search", str(image), "-c", "products", "-f", "price>=cheap"), "--filter")
    async with harness.http(token) as client:
        jobs: list[Any] = (await client.get("/v1/jobs")).json().get("jobs", [])
    assert jobs == []


def _first_image(root: Path) -> Path:
    return sorted((root / "images").rglob("*.jpg"))[0]
