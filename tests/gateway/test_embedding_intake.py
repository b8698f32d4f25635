"""The gateway's embedding side without an embedding service: delegated tokens valid for
embedding and inference, mv-<id> backbones resolved in the caller's tenant, embedding job
intake (snapshots pinned, catalogues required, UNAVAILABLE with nothing queued), the typed
job result kept from a JobResultReported and rendered by GetJob over gRPC and REST.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest
from google.protobuf import any_pb2
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.embedding.v1 import embedding_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.gateway.v1 import jobs_pb2, jobs_pb2_grpc
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.cli.synth import make_catalog_dataset, zip_dataset
from visionmesh.common.auth import (
    Principal,
    ServiceTokenSigner,
    ServiceTokenVerifier,
    bind_principal,
    generate_signing_key,
)
from visionmesh.common.embedded import NatsServer
from visionmesh.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
)
from visionmesh.common.specs.embedding import RESOLVED_BACKBONE_SCOPE
from visionmesh.gateway.core.delegation import DelegatedTokens
from visionmesh.gateway.core.job_events import JobEventApplier
from visionmesh.gateway.db import models as db

from tests.gateway.conftest import GatewayFactory, GatewayHarness, dead_address
from tests.gateway.helpers import detect_zip, upload_dataset
from tests.gateway.test_export_jobs import other_tenant, register_version, rest_fields, tenant_of

pytestmark = pytest.mark.timeout(120)

# Nothing here depends on the SQL dialect beyond what the gateway's own tests cover.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- delegated tokens ---------------------------------------------------------------------


def test_one_delegated_token_is_valid_at_embedding_and_inference_only() -> None:
    signer = ServiceTokenSigner(private_key=generate_signing_key())
    tokens = DelegatedTokens(signer, audience=("embedding", "inference"))
    alice = Principal(subject="alice", tenant_id="t-1", role="member", kind="user")
    with bind_principal(alice):
        token = tokens()
        scoped = tokens.token(extra_scopes=(RESOLVED_BACKBONE_SCOPE,))
    for audience in ("embedding", "inference"):
        verifier = ServiceTokenVerifier(public_keys=(signer.public_key,), audience=audience)
        assert verifier.verify(token) == alice
        assert verifier.verify(scoped).scopes == (RESOLVED_BACKBONE_SCOPE,)
    assert jwt.decode(token, options={"verify_signature": False})["aud"] == [
        "embedding",
        "inference",
    ]
    for audience in ("training", "export"):
        with pytest.raises(Unauthenticated) as refused:
            ServiceTokenVerifier(public_keys=(signer.public_key,), audience=audience).verify(token)
        assert refused.value.reason == "TOKEN_WRONG_AUDIENCE"
    # A single audience stays a plain string claim, as before.
    single = DelegatedTokens(signer, audience="inference")
    with bind_principal(alice):
        assert jwt.decode(single(), options={"verify_signature": False})["aud"] == "inference"


# -- fixtures -----------------------------------------------------------------------------


@pytest.fixture
async def gateway(
    make_gateway: GatewayFactory, nats_server: NatsServer, database_url: str
) -> GatewayHarness:
    """A gateway whose embedding service is down."""
    return await make_gateway(
        nats_url=nats_server.url, database_url=database_url, embedding_addr=dead_address()
    )


def catalog_zip(tmp: Path) -> Path:
    catalog = make_catalog_dataset(tmp / "catalog-src", n_products=4, renders=2, imgsz=48, seed=1)
    return zip_dataset(catalog.root, tmp / "catalog.zip")


def error_of(response: Any) -> tuple[int, str, str, list[str]]:
    body = response.json()
    return response.status_code, body["status"], body["message"], rest_fields(body)


# -- backbones ----------------------------------------------------------------------------


@sqlite_only
async def test_backbones_resolve_to_the_callers_classifiers_only(gateway: GatewayHarness) -> None:
    token = await gateway.signup_and_login("owner")
    async with gateway.http(token) as client:
        tenant_id = await tenant_of(client)
    classifier = await register_version(
        gateway, tenant_id, framework="torchvision", task="classify", imgsz=96, model_name="cls"
    )
    detector = await register_version(gateway, tenant_id, task="detect", model_name="det")
    registry = gateway.gateway.registry
    owner = Principal(subject="owner", tenant_id=tenant_id, role="admin", kind="user")
    stranger = Principal(subject="eve", tenant_id="another-tenant", role="admin", kind="user")
    with bind_principal(owner):
        resolved = await registry.resolve_backbone(f"mv-{classifier}", field="model")
        assert resolved is not None
        assert (resolved.model_version_id, resolved.framework, resolved.imgsz) == (
            classifier,
            "torchvision",
            96,
        )
        assert resolved.checkpoint.key.endswith("/best.pt") and resolved.checkpoint.sha256
        assert resolved.checkpoint.id  # the registry's artifact, as GetModel shows it
        assert await registry.resolve_backbone("dinov2_vits14", field="model") is None
        assert await registry.resolve_backbone("", field="model") is None
        with pytest.raises(FailedPrecondition) as detect:
            await registry.resolve_backbone(f"mv-{detector}", field="spec.model")
        assert [v.field for v in detect.value.field_violations] == ["spec.model"]
        with pytest.raises(NotFound) as unknown:
            await registry.resolve_backbone("mv-nope", field="spec.model")
        assert unknown.value.metadata["field"] == "spec.model"
        with pytest.raises(InvalidArgument) as empty:
            await registry.resolve_backbone("mv-", field="model")
        assert [v.field for v in empty.value.field_violations] == ["model"]
    with bind_principal(stranger), pytest.raises(NotFound) as elsewhere:
        await registry.resolve_backbone(f"mv-{classifier}", field="model")
    assert elsewhere.value.metadata["field"] == "model"


@sqlite_only
async def test_backbones_are_resolved_before_the_embedding_service_is_asked(
    gateway: GatewayHarness,
) -> None:
    admin = await gateway.signup_and_login("admin")
    async with gateway.http(admin) as client:
        tenant_id = await tenant_of(client)
    detector = await register_version(gateway, tenant_id, task="detect")
    classifier = await register_version(
        gateway, tenant_id, framework="torchvision", task="classify", model_name="cls"
    )
    eve = await other_tenant(gateway, admin, "eve")
    async with gateway.http(admin) as client:
        # A backbone is the gateway's to set, from the model name.
        forged = await client.post(
            "/v1/collections",
            json={
                "name": "products",
                "model": "dinov2_vits14",
                "backbone": {"modelVersionId": classifier, "framework": "torchvision"},
            },
        )
        assert error_of(forged)[:2] == (400, "INVALID_ARGUMENT")
        assert error_of(forged)[3] == ["backbone"]
        job = await client.post(
            "/v1/embedding/jobs",
            json={
                "spec": {
                    "images": {"images": [{"key": "a.jpg"}]},
                    "routing": {"defaultCollection": "products"},
                    "backbone": {"modelVersionId": classifier},
                }
            },
        )
        assert error_of(job)[:2] == (400, "INVALID_ARGUMENT")
        assert error_of(job)[3] == ["spec.backbone"]
        detect = await client.post(
            "/v1/collections", json={"name": "products", "model": f"mv-{detector}"}
        )
        status, code, message, fields = error_of(detect)
        assert (status, code, fields) == (400, "FAILED_PRECONDITION", ["model"])
        assert "classification" in message
        spec_detect = await client.post(
            "/v1/embedding/jobs",
            json={
                "spec": {
                    "images": {"images": [{"key": "a.jpg"}]},
                    "routing": {"defaultCollection": "products"},
                    "model": f"mv-{detector}",
                }
            },
        )
        assert error_of(spec_detect)[3] == ["spec.model"]
        # Her own classifier resolves; only then is the (down) embedding service asked.
        embed = await client.post(
            "/v1/embedding:embed",
            json={"model": f"mv-{classifier}", "images": [{"key": "a.jpg"}]},
        )
        assert error_of(embed)[:2] == (503, "UNAVAILABLE")
        listed = await client.get("/v1/collections")
        assert error_of(listed)[:2] == (503, "UNAVAILABLE")
    async with gateway.http(eve) as client:
        theirs = await client.post(
            "/v1/embedding:embed",
            json={"model": f"mv-{classifier}", "images": [{"key": "a.jpg"}]},
        )
        status, code, message, _ = error_of(theirs)
        assert (status, code) == (404, "NOT_FOUND") and message.startswith("model:")


# -- job intake ---------------------------------------------------------------------------


@sqlite_only
async def test_embedding_job_intake_pins_catalogues_and_queues_nothing_while_the_service_is_down(
    gateway: GatewayHarness, tmp_path: Path
) -> None:
    admin = await gateway.signup_and_login("admin")
    eve = await other_tenant(gateway, admin, "eve")
    routing = {"defaultCollection": "products"}
    async with gateway.http(admin) as client:
        catalog = await upload_dataset(client, catalog_zip(tmp_path), name="catalog")
        shapes = await upload_dataset(client, detect_zip(tmp_path), name="shapes")
        assert catalog["http_status"] == shapes["http_status"] == 200
        catalog_id, shapes_id = catalog["dataset"]["id"], shapes["dataset"]["id"]
        shapes_snapshot = (
            await client.post(f"/v1/datasets/{shapes_id}/snapshots", json={})
        ).json()["snapshot"]["id"]

        async def create(spec: dict[str, Any]) -> Any:
            return await client.post(
                "/v1/embedding/jobs", json={"spec": {**spec, "routing": routing}}
            )

        cases: list[tuple[dict[str, Any], tuple[int, str], str]] = [
            (
                {"products": {"datasetId": "nope", "productIds": ["p0000"]}},
                (404, "NOT_FOUND"),
                "spec.products.dataset_id",
            ),
            (
                {"metadataFilter": {"snapshotId": "nope"}},
                (404, "NOT_FOUND"),
                "spec.metadata_filter.snapshot_id",
            ),
            ({"dataset": {"datasetId": "nope"}}, (404, "NOT_FOUND"), "spec.dataset.dataset_id"),
            (
                {"products": {"datasetId": shapes_id, "productIds": ["p0000"]}},
                (400, "FAILED_PRECONDITION"),
                "spec.products.dataset_id",
            ),
            (
                {"metadataFilter": {"snapshotId": shapes_snapshot}},
                (400, "FAILED_PRECONDITION"),
                "spec.metadata_filter.snapshot_id",
            ),
        ]
        for spec, expected, field in cases:
            response = await create(spec)
            status, code, message, fields = error_of(response)
            assert (status, code) == expected, (spec, response.text)
            assert message.startswith(f"{field}:"), message
            if code == "FAILED_PRECONDITION":
                assert fields == [field]
        # Pinned data of the right kind: the embedding service alone can say the rest.
        for spec in (
            {"products": {"datasetId": catalog_id, "productIds": ["p0000"]}},
            {"metadataFilter": {"datasetId": catalog_id}},
            {"dataset": {"datasetId": shapes_id}},
            {"dataset": {"snapshotId": shapes_snapshot}},
            {"images": {"images": [{"key": "a.jpg"}]}},
        ):
            assert error_of(await create(spec))[:2] == (503, "UNAVAILABLE"), spec
        snapshots = (await client.get(f"/v1/datasets/{catalog_id}/snapshots")).json()
        assert len(snapshots["snapshots"]) == 1  # pinned once, as training pins
        assert (await client.get("/v1/jobs")).json().get("jobs", []) == []
    async with gateway.http(eve) as client:
        theirs = await client.post(
            "/v1/embedding/jobs",
            json={
                "spec": {
                    "products": {"datasetId": catalog_id, "productIds": ["p0000"]},
                    "routing": routing,
                }
            },
        )
        assert error_of(theirs)[:2] == (404, "NOT_FOUND")
    async with gateway.gateway.db.session() as session:
        outbox = (await session.execute(db.OutboxMessage.__table__.select())).all()
    assert outbox == []


# -- typed results ------------------------------------------------------------------------


def embedding_result() -> embedding_pb2.EmbeddingJobResult:
    return embedding_pb2.EmbeddingJobResult(
        images_selected=5,
        images_embedded=4,
        collections=[
            embedding_pb2.CollectionPoints(collection="products", points=3),
            embedding_pb2.CollectionPoints(collection="cutouts", points=1),
        ],
        skipped=[embedding_pb2.SkippedImage(key="bad.jpg", reason="UNDECODABLE", message="no")],
        images_skipped=1,
    )


async def add_job(gateway: GatewayHarness, tenant_id: str, kind: int) -> str:
    job_id = db.new_id()
    async with gateway.gateway.db.session() as session:
        session.add(
            db.Job(
                id=job_id,
                tenant_id=tenant_id,
                kind=kind,
                state=job_pb2.JOB_STATE_RUNNING,
                spec_type=embedding_pb2.EmbeddingJobSpec.DESCRIPTOR.full_name,
                spec_json="{}",
                attempts=1,
            )
        )
    return job_id


def result_event(job_id: str, tenant_id: str, sequence: int, result: Any) -> events_pb2.JobEvent:
    packed = any_pb2.Any()
    packed.Pack(result)
    return events_pb2.JobEvent(
        job_id=job_id,
        tenant_id=tenant_id,
        attempt=1,
        worker_sequence=sequence,
        result=events_pb2.JobResultReported(result=packed),
    )


@sqlite_only
async def test_a_jobs_typed_result_is_kept_for_its_kind_and_rendered_by_get_job(
    gateway: GatewayHarness,
) -> None:
    token = await gateway.signup_and_login("owner")
    async with gateway.http(token) as client:
        tenant_id = await tenant_of(client)
    embedding_job = await add_job(gateway, tenant_id, job_pb2.JOB_KIND_EMBEDDING)
    batch_job = await add_job(gateway, tenant_id, job_pb2.JOB_KIND_BATCH_INFERENCE)
    applier = JobEventApplier(db=gateway.gateway.db, watchers=gateway.gateway.watchers)
    wrong_type = inference_pb2.BatchInferenceSpec(deployment="dets")
    # Another kind's result, or a kind without one, is dropped.
    assert not await applier.apply(result_event(embedding_job, tenant_id, 1, wrong_type))
    assert not await applier.apply(result_event(batch_job, tenant_id, 1, embedding_result()))
    undecodable = result_event(embedding_job, tenant_id, 2, embedding_result())
    undecodable.result.result.value = b"\xff\xff\xff"
    assert not await applier.apply(undecodable)
    assert await applier.apply(result_event(embedding_job, tenant_id, 3, embedding_result()))
    assert not await applier.apply(result_event(embedding_job, tenant_id, 3, embedding_result()))

    metadata = (("authorization", f"Bearer {token}"),)
    async with gateway.channel() as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        got = (await stub.GetJob(jobs_pb2.GetJobRequest(id=embedding_job), metadata=metadata)).job
        other = (await stub.GetJob(jobs_pb2.GetJobRequest(id=batch_job), metadata=metadata)).job
    unpacked = embedding_pb2.EmbeddingJobResult()
    assert got.result.Unpack(unpacked) and unpacked == embedding_result()
    assert not other.HasField("result")
    async with gateway.http(token) as client:
        shown = (await client.get(f"/v1/jobs/{embedding_job}")).json()["job"]
        listed = (await client.get("/v1/jobs")).json()["jobs"]
    assert shown["result"] == {
        "@type": "type.googleapis.com/visionmesh.embedding.v1.EmbeddingJobResult",
        "imagesSelected": "5",
        "imagesEmbedded": "4",
        "collections": [
            {"collection": "products", "points": "3"},
            {"collection": "cutouts", "points": "1"},
        ],
        "skipped": [{"key": "bad.jpg", "reason": "UNDECODABLE", "message": "no"}],
        "imagesSkipped": "1",
    }
    assert [job.get("result") for job in listed if job["id"] == embedding_job] == [shown["result"]]
