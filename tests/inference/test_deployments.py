"""Deployments as desired state in SQL: load, serve, swap, restart and replicas converging.

Real pieces throughout: the export pipeline's packages in a real S3 server, ONNX Runtime,
SQLite and PostgreSQL, and the service's own gRPC server with service tokens.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
from visionmesh.api.common.v1 import image_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.inference.v1 import inference_pb2, inference_pb2_grpc
from visionmesh.common.auth import (
    Principal,
    ServiceTokenSigner,
    bind_principal,
    generate_signing_key,
    public_key_pem,
)
from visionmesh.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
    PermissionDenied,
)
from visionmesh.common.specs.batch_inference import RESOLVED_EXPORT_SCOPE
from visionmesh.common.storage import ObjectStore, ObjectStoreConfig
from visionmesh.export.core.pipeline import ExportPackage
from visionmesh.inference.app import InferenceService
from visionmesh.inference.config import InferenceSettings

from tests.inference.exports import jpeg, publish_export
from tests.models import (
    NAMES,
    classifier_checkpoint,
    export_package,
    export_target,
    yolo_checkpoint,
)

pytestmark = pytest.mark.timeout(300)

# The store's SQL is exercised on both backends by the load and the replicas tests; the
# rest are about serving, on SQLite.
SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

READY = inference_pb2.DEPLOYMENT_STATE_READY
FAILED = inference_pb2.DEPLOYMENT_STATE_FAILED
LOADING = inference_pb2.DEPLOYMENT_STATE_LOADING


def _caller(tenant: str, *, role: str = "member", resolved: bool = False) -> Principal:
    scopes = (RESOLVED_EXPORT_SCOPE,) if resolved else ()
    return Principal(
        subject=f"user-{tenant}", tenant_id=tenant, role=role, kind="user", scopes=scopes
    )  # type: ignore[arg-type]


GATEWAY_A = _caller("tenant-a", resolved=True)
USER_A = _caller("tenant-a")
USER_B = _caller("tenant-b", resolved=True)
ADMIN_A = _caller("tenant-a", role="admin")


@pytest.fixture(scope="module")
def detect_package(tmp_path_factory: pytest.TempPathFactory) -> ExportPackage:
    tmp = tmp_path_factory.mktemp("detect")
    checkpoint = yolo_checkpoint(tmp / "detect.pt", "yolo11n.yaml", confident=True)
    target = export_target(export_pb2.ExportSpec(), "ultralytics", "detect", ())
    return export_package(tmp / "out", checkpoint, target, images=2)


@pytest.fixture(scope="module")
def classify_package(tmp_path_factory: pytest.TempPathFactory) -> ExportPackage:
    tmp = tmp_path_factory.mktemp("classify")
    checkpoint = classifier_checkpoint(tmp / "classify.pt")
    target = export_target(export_pb2.ExportSpec(), "torchvision", "classify", NAMES)
    return export_package(tmp / "out", checkpoint, target, images=2)


@pytest.fixture
def key_file(tmp_path: Path) -> tuple[Path, ServiceTokenSigner]:
    signer = ServiceTokenSigner(private_key=generate_signing_key())
    path = tmp_path / "gateway.pub"
    path.write_bytes(public_key_pem(signer.public_key))
    return path, signer


def _settings(
    data_dir: Path, database_url: str, store: ObjectStoreConfig, key: Path
) -> InferenceSettings:
    return InferenceSettings(
        data_dir=data_dir,
        database_url=database_url,
        grpc_port=0,
        kserve_grpc_port=0,
        kserve_http_port=0,
        s3_endpoint=store.endpoint,
        s3_access_key=store.access_key,
        s3_secret_key=store.secret_key,
        s3_bucket=store.bucket,
        service_token_public_key_file=key,
        reconcile_seconds=0.2,
        batch_queue_delay_ms=1.0,
        # Only `serve` connects to NATS (batch jobs); these tests run the rest.
        nats_url="nats://127.0.0.1:1",
    )


@contextlib.asynccontextmanager
async def _running(settings: InferenceSettings) -> AsyncIterator[InferenceService]:
    """A replica: its tables migrated, its reconcile loop running, its gRPC port open."""
    service = InferenceService(settings)
    await service.start()
    loop = asyncio.create_task(service.manager.run())
    await service.grpc.start()
    try:
        yield service
    finally:
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
        await service.grpc.stop(grace=0)
        await service.stop()


@pytest_asyncio.fixture
async def replica_factory(
    tmp_path: Path,
    database_url: str,
    object_store_config: ObjectStoreConfig,
    key_file: tuple[Path, ServiceTokenSigner],
) -> AsyncIterator[Callable[[str], Any]]:
    """Replicas sharing one database and bucket, each with its own data dir."""
    stack = contextlib.AsyncExitStack()

    async def start(name: str) -> InferenceService:
        settings = _settings(tmp_path / name, database_url, object_store_config, key_file[0])
        return await stack.enter_async_context(_running(settings))

    async with stack:
        yield start


async def _call(principal: Principal, method: Callable[..., Any], *args: Any) -> Any:
    with bind_principal(principal):
        return await method(*args)


async def _settled(
    service: InferenceService, principal: Principal, name: str, *, generation: str = ""
) -> inference_pb2.Deployment:
    deadline = time.monotonic() + 120
    while True:
        deployment = await _call(principal, service.core.get_deployment, name)
        if deployment.state != LOADING:
            return deployment  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, f"{name} still LOADING"
        await asyncio.sleep(0.1)


def _load(
    name: str, export: export_pb2.ExportResult, job: str, **kw: Any
) -> inference_pb2.LoadModelRequest:
    return inference_pb2.LoadModelRequest(
        name=name, export=export, resolved_export_job_id=job, **kw
    )


def _predict(name: str, *images: bytes) -> inference_pb2.PredictRequest:
    return inference_pb2.PredictRequest(
        deployment=name,
        images=[image_pb2.Image(data=data) for data in images],
        options=inference_pb2.PredictOptions(conf=0.01),
    )


@pytest_asyncio.fixture
async def exports(
    object_store: ObjectStore, detect_package: ExportPackage, classify_package: ExportPackage
) -> dict[str, export_pb2.ExportResult]:
    return {
        "detect": await publish_export(object_store, detect_package, "export-detect"),
        "classify": await publish_export(object_store, classify_package, "export-classify"),
    }


async def test_a_deployment_loads_in_the_background_and_serves_only_its_tenant(
    replica_factory: Callable[[str], Any], exports: dict[str, export_pb2.ExportResult]
) -> None:
    service = await replica_factory("a")
    created = await _call(
        GATEWAY_A, service.core.load_model, _load("shapes", exports["detect"], "export-detect")
    )
    assert created.state in (LOADING, READY) and created.model_version_id == "mv-1"
    ready = await _settled(service, USER_A, "shapes")
    assert ready.state == READY, ready.failure_reason
    assert ready.backend == "onnxruntime" and ready.metadata.task == "detect"
    assert ready.HasField("load_time")

    response = await _call(USER_A, service.core.predict, _predict("shapes", jpeg(1), jpeg(2)))
    assert response.task == "detect" and len(response.results) == 2
    assert response.results[0].width == 96 and response.results[0].height == 80
    assert response.model_version_id == "mv-1" and response.deployment == "shapes"

    # Loading the same source again is a no-op; another source needs replace.
    again = await _call(
        GATEWAY_A, service.core.load_model, _load("shapes", exports["detect"], "export-detect")
    )
    assert again.state == READY
    with pytest.raises(AlreadyExists):
        await _call(
            GATEWAY_A,
            service.core.load_model,
            _load("shapes", exports["classify"], "export-classify"),
        )

    # Another tenant sees nothing of it.
    for method, arg in (
        (service.core.get_deployment, "shapes"),
        (service.core.unload_model, "shapes"),
        (service.core.predict, _predict("shapes", jpeg(1))),
    ):
        with pytest.raises(NotFound):
            await _call(USER_B, method, arg)
    listed, _ = await _call(
        USER_B, lambda: service.core.list_deployments(page_size=0, page_token="")
    )
    assert listed == []

    unloaded = await _call(USER_A, service.core.unload_model, "shapes")
    assert unloaded.name == "shapes"
    with pytest.raises(NotFound):
        await _call(USER_A, service.core.get_deployment, "shapes")


@SQLITE_ONLY
async def test_only_the_gateway_may_hand_over_an_export(
    replica_factory: Callable[[str], Any], exports: dict[str, export_pb2.ExportResult]
) -> None:
    service = await replica_factory("a")
    with pytest.raises(PermissionDenied):
        await _call(USER_A, service.core.load_model, _load("x", exports["detect"], "export-detect"))
    with pytest.raises(FailedPrecondition) as raised:
        await _call(
            GATEWAY_A,
            service.core.load_model,
            inference_pb2.LoadModelRequest(name="x", model_version_id="mv-1"),
        )
    assert [v.field for v in raised.value.field_violations] == ["model_version_id"]
    with pytest.raises(FailedPrecondition) as raised:
        await _call(
            GATEWAY_A,
            service.core.load_model,
            _load("x", exports["detect"], "export-detect", backend="triton"),
        )
    assert [v.field for v in raised.value.field_violations] == ["backend"]


@SQLITE_ONLY
async def test_a_corrupt_package_fails_with_its_reason_and_is_not_served(
    replica_factory: Callable[[str], Any],
    exports: dict[str, export_pb2.ExportResult],
    object_store: ObjectStore,
) -> None:
    service = await replica_factory("a")
    forged = export_pb2.ExportResult()
    forged.CopyFrom(exports["detect"])
    forged.onnx.sha256 = "0" * 64
    await _call(GATEWAY_A, service.core.load_model, _load("bad", forged, "export-forged"))
    failed = await _settled(service, USER_A, "bad")
    assert failed.state == FAILED and "does not match its export record" in failed.failure_reason
    with pytest.raises(FailedPrecondition, match="FAILED"):
        await _call(USER_A, service.core.predict, _predict("bad", jpeg(1)))


@SQLITE_ONLY
async def test_images_by_key_stay_in_the_tenant_and_bad_ones_are_named(
    replica_factory: Callable[[str], Any],
    exports: dict[str, export_pb2.ExportResult],
    object_store: ObjectStore,
) -> None:
    service = await replica_factory("a")
    await _call(
        GATEWAY_A, service.core.load_model, _load("cls", exports["classify"], "export-classify")
    )
    assert (await _settled(service, USER_A, "cls")).state == READY
    await object_store.put_bytes("tenants/tenant-a/in/one.jpg", jpeg(3))
    await object_store.put_bytes("tenants/tenant-b/in/theirs.jpg", jpeg(4))
    request = inference_pb2.PredictRequest(
        deployment="cls",
        images=[
            image_pb2.Image(key="in/one.jpg"),
            image_pb2.Image(key="../tenant-b/in/theirs.jpg"),
            image_pb2.Image(key="in/missing.jpg"),
            image_pb2.Image(data=b"not an image"),
        ],
    )
    response = await _call(USER_A, service.core.predict, request)
    first, outside, missing, garbage = response.results
    assert first.key == "in/one.jpg" and len(first.classifications) == len(NAMES)
    assert not first.HasField("error")
    assert (outside.error.field, outside.error.reason) == ("images[1].key", "OUTSIDE_TENANT")
    assert (missing.error.field, missing.error.reason) == ("images[2].key", "NOT_FOUND")
    assert garbage.error.field == "images[3].data"


async def test_a_restarted_replica_reloads_and_replicas_converge(
    replica_factory: Callable[[str], Any], exports: dict[str, export_pb2.ExportResult]
) -> None:
    first = await replica_factory("a")
    second = await replica_factory("b")
    await _call(
        GATEWAY_A, first.core.load_model, _load("shapes", exports["detect"], "export-detect")
    )
    for replica in (first, second):
        assert (await _settled(replica, USER_A, "shapes")).state == READY
    # A replica started later (a restart) loads it from the table alone.
    third = await replica_factory("c")
    assert (await _settled(third, USER_A, "shapes")).state == READY
    response = await _call(USER_A, third.core.predict, _predict("shapes", jpeg(5)))
    assert len(response.results) == 1

    await _call(USER_A, first.core.unload_model, "shapes")
    deadline = time.monotonic() + 30
    while second.core.model_ready(USER_A, "shapes") or third.core.model_ready(USER_A, "shapes"):
        assert time.monotonic() < deadline, "replicas still serve an unloaded deployment"
        await asyncio.sleep(0.1)


@SQLITE_ONLY
async def test_a_redeploy_under_load_swaps_without_a_failed_request(
    replica_factory: Callable[[str], Any],
    exports: dict[str, export_pb2.ExportResult],
    key_file: tuple[Path, ServiceTokenSigner],
) -> None:
    """Clients hammer Predict over gRPC while the deployment is replaced: none fails, and
    the answers switch from the old model's to the new one's."""
    service = await replica_factory("a")
    await _call(
        GATEWAY_A, service.core.load_model, _load("live", exports["classify"], "export-classify")
    )
    assert (await _settled(service, USER_A, "live")).state == READY

    token = key_file[1].sign(audience="inference", principal=USER_A)
    metadata = (("authorization", f"Bearer {token}"),)
    failures: list[str] = []
    tasks_seen: set[str] = set()
    stop = asyncio.Event()
    async with grpc.aio.insecure_channel(service.grpc.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        async def client(seed: int) -> None:
            while not stop.is_set():
                try:
                    answer = await stub.Predict(_predict("live", jpeg(seed)), metadata=metadata)
                    tasks_seen.add(answer.task)
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")

        clients = [asyncio.create_task(client(seed)) for seed in range(4)]
        await asyncio.sleep(0.5)
        await _call(
            GATEWAY_A,
            service.core.load_model,
            _load("live", exports["detect"], "export-detect", replace=True),
        )
        deadline = time.monotonic() + 120
        while "detect" not in tasks_seen:
            assert time.monotonic() < deadline and not failures, failures[:3]
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)
        stop.set()
        await asyncio.gather(*clients)
    assert failures == []
    assert tasks_seen == {"classify", "detect"}
    swapped = await _call(USER_A, service.core.get_deployment, "live")
    assert swapped.state == READY and swapped.export_job_id == "export-detect"


@SQLITE_ONLY
async def test_a_deployment_is_a_kserve_model_for_triton_clients(
    replica_factory: Callable[[str], Any],
    exports: dict[str, export_pb2.ExportResult],
    key_file: tuple[Path, ServiceTokenSigner],
    detect_package: ExportPackage,
) -> None:
    """tritonclient (gRPC and HTTP) sees the tenant's deployment under its name, with the
    export's metadata in its config, and infers equal to ONNX Runtime on the same tensor."""
    import numpy as np
    import onnxruntime
    import tritonclient.grpc.aio as grpcclient
    import tritonclient.http.aio as httpclient

    service = await replica_factory("a")
    await _call(
        GATEWAY_A, service.core.load_model, _load("shapes", exports["detect"], "export-detect")
    )
    assert (await _settled(service, USER_A, "shapes")).state == READY
    headers = {
        "authorization": f"Bearer {key_file[1].sign(audience='inference', principal=USER_A)}"
    }
    other = {"authorization": f"Bearer {key_file[1].sign(audience='inference', principal=USER_B)}"}
    # The default export has a fixed batch of 1.
    batch = np.random.default_rng(0).random((1, 3, 64, 64), dtype=np.float32)
    session = onnxruntime.InferenceSession(str(detect_package.path("model.onnx")))
    (expected,) = session.run(None, {session.get_inputs()[0].name: batch})

    grpc_client = grpcclient.InferenceServerClient(service.kserve_grpc.address)
    try:
        assert await grpc_client.is_model_ready("shapes", headers=headers)
        assert not await grpc_client.is_model_ready("shapes", headers=other)
        config = await grpc_client.get_model_config("shapes", headers=headers, as_json=True)
        assert config["config"]["name"] == "shapes"
        assert "names" in config["config"]["parameters"]["metadata"]["string_value"]
        tensor = grpcclient.InferInput("images", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch)
        result = await grpc_client.infer("shapes", [tensor], headers=headers)
        np.testing.assert_allclose(result.as_numpy("output0"), expected, rtol=1e-5, atol=1e-5)
    finally:
        await grpc_client.close()

    assert service.kserve_http is not None
    http_client = httpclient.InferenceServerClient(f"127.0.0.1:{service.kserve_http.port}")
    try:
        tensor = httpclient.InferInput("images", list(batch.shape), "FP32")
        tensor.set_data_from_numpy(batch, binary_data=True)
        output = httpclient.InferRequestedOutput("output0", binary_data=True)
        result = await http_client.infer("shapes", [tensor], outputs=[output], headers=headers)
        np.testing.assert_allclose(result.as_numpy("output0"), expected, rtol=1e-5, atol=1e-5)
        admin = {
            "authorization": f"Bearer {key_file[1].sign(audience='inference', principal=ADMIN_A)}"
        }
        index = await http_client.get_model_repository_index(headers=admin)
        assert [(m["name"], m["state"]) for m in index] == [("shapes", "READY")]
        # A repository unload keeps the deployment, unserved, until a load serves it again.
        await http_client.unload_model("shapes", headers=admin)
        deadline = time.monotonic() + 30
        while await http_client.is_model_ready("shapes", headers=headers):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        index = await http_client.get_model_repository_index(headers=admin)
        assert [(m["name"], m["state"]) for m in index] == [("shapes", "UNAVAILABLE")]
        await http_client.load_model("shapes", headers=admin)
        while not await http_client.is_model_ready("shapes", headers=headers):
            assert time.monotonic() < deadline + 60
            await asyncio.sleep(0.1)
    finally:
        await http_client.close()
