"""Export jobs through the real gateway: intake and its rejections, the applier, the registry.

Model versions are registered the way a training job's worker does it, by applying a
`model_trained` event to a training job; export results by applying `model_exported`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf import json_format
from visionmesh.api.common.v1 import artifact_pb2, job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.export.v1 import export_pb2, export_pb2_grpc
from visionmesh.api.gateway.v1 import jobs_pb2, jobs_pb2_grpc, models_pb2, models_pb2_grpc
from visionmesh.api.training.v1 import training_pb2
from visionmesh.common.embedded import NatsServer
from visionmesh.common.errors import VisionMeshError, from_rpc_error
from visionmesh.common.events import EventBus
from visionmesh.common.specs.export import (
    DEFAULT_OPSET,
    SUPPORTED_OPSETS,
    TENSORRT_UNCONFIRMED,
    ExportCapabilities,
    FormatSupport,
)
from visionmesh.common.subjects import JOBS_STREAM, job_request_subject
from visionmesh.gateway.core.job_events import JobEventApplier
from visionmesh.gateway.db import models as db

from tests.gateway.conftest import GatewayFactory, GatewayHarness, RulesExportService
from tests.gateway.helpers import ScriptedWorker, detect_zip, upload_dataset, wait_for
from tests.gateway.test_gateway_jobs import SPEC as TRAINING_SPEC

CHECKPOINT = b"weights"
GPU = ExportCapabilities(
    formats=(
        FormatSupport("onnx", True, library_version="1.23.2"),
        FormatSupport("tensorrt", True, library_version="10.13.0"),
    ),
    opsets=SUPPORTED_OPSETS,
    default_opset=DEFAULT_OPSET,
    devices=("cpu", "cuda:0"),
)


# -- helpers ------------------------------------------------------------------------------


async def tenant_of(client: httpx.AsyncClient) -> str:
    return str((await client.get("/v1/me")).json()["tenant"]["id"])


async def other_tenant(harness: GatewayHarness, admin: str, username: str) -> str:
    """A user of a tenant of their own, signed up by the admin; their access token."""
    async with harness.http(admin) as client:
        signup = await client.post(
            "/v1/auth/signup", json={"username": username, "password": "correct-horse-2"}
        )
        assert signup.status_code == 200, signup.text
    async with harness.http() as anon:
        login = await anon.post(
            "/v1/auth/login", json={"username": username, "password": "correct-horse-2"}
        )
        return str(login.json()["accessToken"])


async def register_version(
    harness: GatewayHarness,
    tenant_id: str,
    *,
    framework: str = "ultralytics",
    task: str = "detect",
    imgsz: int = 64,
    training_job_id: str = "",
    model_name: str = "shapes-detect",
) -> str:
    """A model version registered from a `model_trained` event of a training job (the
    given one, or a new one written straight into the database)."""
    gateway = harness.gateway
    if not training_job_id:
        training_job_id = db.new_id()
        async with gateway.db.session() as session:
            session.add(
                db.Job(
                    id=training_job_id,
                    tenant_id=tenant_id,
                    kind=job_pb2.JOB_KIND_TRAINING,
                    state=job_pb2.JOB_STATE_RUNNING,
                    spec_type=training_pb2.TrainingSpec.DESCRIPTOR.full_name,
                    spec_json="{}",
                    model_name=model_name,
                    attempts=1,
                )
            )
    key = f"jobs/{training_job_id}/best.pt"
    await gateway.store.put_bytes(key, CHECKPOINT)
    checkpoint = artifact_pb2.ArtifactRef(
        name="best.pt",
        kind="checkpoint",
        key=key,
        size_bytes=len(CHECKPOINT),
        sha256=hashlib.sha256(CHECKPOINT).hexdigest(),
    )
    trained = events_pb2.ModelTrained(
        framework=framework,
        task=task,
        architecture="resnet18" if framework == "torchvision" else "yolo11n.yaml",
        class_names=["circle", "square", "triangle"],
        imgsz=imgsz,
        metrics={"map50": 0.5},
        checkpoint=checkpoint,
    )
    applier = JobEventApplier(db=gateway.db, watchers=gateway.watchers)
    assert await applier.apply(
        events_pb2.JobEvent(
            job_id=training_job_id,
            tenant_id=tenant_id,
            attempt=1,
            worker_sequence=1_000,
            model_trained=trained,
        )
    )
    async with gateway.db.session() as session:
        job = await session.get(db.Job, training_job_id)
        assert job is not None and job.model_version_id
        return job.model_version_id


def export_result(
    job_id: str, version_id: str, *, tensorrt: bool = False
) -> export_pb2.ExportResult:
    prefix = f"jobs/{job_id}/"

    def ref(name: str, kind: str) -> artifact_pb2.ArtifactRef:
        key = prefix + name  # also the file's content (see upload_files)
        return artifact_pb2.ArtifactRef(
            name=name.rsplit("/", 1)[-1],
            kind=kind,
            key=key,
            size_bytes=len(key),
            sha256=hashlib.sha256(key.encode()).hexdigest(),
        )

    formats = ["onnx", "tensorrt"] if tensorrt else ["onnx"]
    result = export_pb2.ExportResult(
        model_version_id=version_id,
        spec=export_pb2.ExportSpec(model_version_id=version_id, formats=formats),
        onnx=ref("model.onnx", "onnx"),
        metadata_file=ref("metadata.json", "metadata"),
        triton_repository_prefix=prefix + "triton/",
        triton_models=[
            export_pb2.TritonModel(
                name="shapes-detect-v1",
                platform="onnxruntime_onnx",
                version=1,
                config=ref("triton/shapes-detect-v1/config.pbtxt", "triton_config"),
                model=ref("triton/shapes-detect-v1/1/model.onnx", "onnx"),
            )
        ],
        triton_repository_zip=ref("triton.zip", "package"),
        parity_report_file=ref("parity.json", "parity_report"),
        parity=export_pb2.ParityReport(format="onnx", images=4, passed=True),
        parity_max_abs_diff=1e-5,
    )
    if tensorrt:
        result.tensorrt.CopyFrom(ref("model.plan", "tensorrt"))
    return result


async def upload_files(harness: GatewayHarness, result: export_pb2.ExportResult) -> None:
    """Puts each file the result names into the store, its key as its content."""
    for ref in (
        result.onnx,
        result.tensorrt,
        result.metadata_file,
        result.triton_repository_zip,
        result.parity_report_file,
    ):
        if ref.key:
            await harness.gateway.store.put_bytes(ref.key, ref.key.encode())


async def apply_exported(
    harness: GatewayHarness,
    job: dict[str, Any],
    result: export_pb2.ExportResult,
    *,
    attempt: int = 1,
    sequence: int = 1,
) -> bool:
    applier = JobEventApplier(db=harness.gateway.db, watchers=harness.gateway.watchers)
    return await applier.apply(
        events_pb2.JobEvent(
            job_id=job["id"],
            tenant_id=job["tenantId"],
            attempt=attempt,
            worker_sequence=sequence,
            model_exported=events_pb2.ModelExported(result=result),
        )
    )


async def create_export(
    client: httpx.AsyncClient, version_id: str, spec: dict[str, Any] | None = None
) -> dict[str, Any]:
    response = await client.post(
        "/v1/export/jobs", json={"modelVersionId": version_id, "spec": spec or {}}
    )
    assert response.status_code == 200, response.text
    job: dict[str, Any] = response.json()["job"]
    return job


def rest_fields(body: dict[str, Any]) -> list[str]:
    """Fields a REST error names: BadRequest's field violations, PreconditionFailure's subjects."""
    fields = []
    for detail in body.get("details", []):
        fields += [v["field"] for v in detail.get("fieldViolations", [])]
        fields += [v["subject"] for v in detail.get("violations", [])]
    return fields


async def grpc_error(
    harness: GatewayHarness, token: str, request: jobs_pb2.CreateExportJobRequest
) -> VisionMeshError:
    async with harness.channel() as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.CreateExportJob(request, metadata=(("authorization", f"Bearer {token}"),))
    return from_rpc_error(failure.value)


# -- intake -------------------------------------------------------------------------------


async def test_export_job_is_queued_with_defaults_and_everything_the_worker_needs(
    harness: GatewayHarness, bus: EventBus
) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        uploaded = await upload_dataset(client, detect_zip(harness.tmp))
        dataset = uploaded["dataset"]
        training = (
            await client.post(
                "/v1/training/jobs", json={"datasetId": dataset["id"], "spec": TRAINING_SPEC}
            )
        ).json()["job"]
        version_id = await register_version(
            harness, training["tenantId"], training_job_id=training["id"]
        )

        job = await create_export(client, version_id)
        assert job["kind"] == "JOB_KIND_EXPORT"
        assert job["modelVersionId"] == version_id
        assert job["snapshotId"] == training["snapshotId"]
        assert job["datasetId"] == dataset["id"]
        spec = job["spec"]
        assert spec["@type"].endswith("visionmesh.export.v1.ExportSpec")
        assert spec["modelVersionId"] == version_id
        assert spec["formats"] == ["onnx"] and spec["opset"] == 17 and spec["imgsz"] == 64
        assert spec["device"] == "auto" and spec["maxBatchSize"] == 1 and spec["simplify"]
        assert spec["nmsSettings"]["maxDet"] == 300
        assert {k: v for k, v in spec["triton"].items() if k != "modelName"} == {
            "version": 1,
            "instanceCount": 1,
            "maxQueueDelayMicroseconds": 100,
        }

        async def queued() -> bool:
            state = (await client.get(f"/v1/jobs/{job['id']}")).json()["job"]["state"]
            return bool(state == "JOB_STATE_QUEUED")

        await wait_for(queued, what="export job QUEUED by the outbox relay")
        listed = (await client.get("/v1/jobs", params={"kind": "JOB_KIND_EXPORT"})).json()
        assert [j["id"] for j in listed["jobs"]] == [job["id"]]

    message = await bus.js.get_last_msg(JOBS_STREAM, job_request_subject(job_pb2.JOB_KIND_EXPORT))
    request = events_pb2.JobRequest.FromString(message.data or b"")
    assert request.job_id == job["id"] and request.kind == job_pb2.JOB_KIND_EXPORT
    work = request.export
    assert work.checkpoint_key == f"jobs/{training['id']}/best.pt"
    assert work.checkpoint_sha256 == hashlib.sha256(CHECKPOINT).hexdigest()
    assert (work.model_name, work.model_version) == ("shapes-detect", 1)
    assert (work.framework, work.task, work.architecture) == (
        "ultralytics",
        "detect",
        "yolo11n.yaml",
    )
    assert list(work.class_names) == ["circle", "square", "triangle"]
    assert work.artifact_prefix == f"jobs/{job['id']}/"
    assert work.imgsz == 64
    assert work.snapshot.snapshot_id == training["snapshotId"]
    assert work.snapshot.manifest_sha256 == dataset["manifestSha256"]
    assert work.snapshot.task == "detect"
    assert work.spec == json_format.ParseDict(
        {k: v for k, v in spec.items() if k != "@type"}, export_pb2.ExportSpec()
    )


async def test_model_version_id_in_the_spec_alone_or_disagreeing(harness: GatewayHarness) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        version_id = await register_version(harness, await tenant_of(client))
        in_spec = await client.post(
            "/v1/export/jobs", json={"spec": {"modelVersionId": version_id, "opset": 13}}
        )
        assert in_spec.status_code == 200, in_spec.text
        assert in_spec.json()["job"]["modelVersionId"] == version_id
        assert in_spec.json()["job"]["spec"]["opset"] == 13
        bodies: list[dict[str, Any]] = [
            {"spec": {}},
            {"modelVersionId": version_id, "spec": {"modelVersionId": "another"}},
        ]
        for body in bodies:
            response = await client.post("/v1/export/jobs", json=body)
            assert response.status_code == 400, response.text
            assert response.json()["status"] == "INVALID_ARGUMENT"
            assert rest_fields(response.json()) == ["model_version_id"]


async def test_rejections_name_their_field_and_code_over_rest_and_grpc(
    harness: GatewayHarness,
) -> None:
    """No export service answers here: the shared rules, which cannot confirm TensorRT."""
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        tenant = await tenant_of(client)
        detector = await register_version(harness, tenant)
        classifier = await register_version(
            harness, tenant, framework="torchvision", task="classify", model_name="shapes-cls"
        )
        cases: list[tuple[str, dict[str, Any], str, str]] = [
            (detector, {"formats": ["tensorrt"]}, "FAILED_PRECONDITION", "spec.formats"),
            (detector, {"half": True}, "INVALID_ARGUMENT", "spec.half"),
            (detector, {"opset": 21}, "INVALID_ARGUMENT", "spec.opset"),
            (detector, {"device": "cuda:0"}, "FAILED_PRECONDITION", "spec.device"),
            (classifier, {"nms": True}, "INVALID_ARGUMENT", "spec.nms"),
            (detector, {"softmax": True}, "INVALID_ARGUMENT", "spec.softmax"),
            (detector, {"imgsz": 100}, "INVALID_ARGUMENT", "spec.imgsz"),
            (detector, {"nmsSettings": {"iou": 1.5}}, "INVALID_ARGUMENT", "spec.nms_settings.iou"),
        ]
        for version_id, spec, status, field in cases:
            response = await client.post(
                "/v1/export/jobs", json={"modelVersionId": version_id, "spec": spec}
            )
            assert response.status_code == 400, (spec, response.text)
            body = response.json()
            assert (body["status"], rest_fields(body)) == (status, [field]), spec
        formats = await client.post(
            "/v1/export/jobs", json={"modelVersionId": detector, "spec": {"formats": ["tensorrt"]}}
        )
        assert TENSORRT_UNCONFIRMED in formats.json()["message"]
        # Nothing was stored for any of them.
        exports = await client.get("/v1/jobs", params={"kind": "JOB_KIND_EXPORT"})
        assert exports.json()["jobs"] == []

    for version_id, spec, status, field in cases:
        request = jobs_pb2.CreateExportJobRequest(model_version_id=version_id)
        json_format.ParseDict(spec, request.spec)
        error = await grpc_error(harness, token, request)
        assert error.status_name == status, spec
        assert [v.field for v in getattr(error, "field_violations", ())] == [field], spec


async def test_versions_of_other_tenants_unknown_ones_and_ones_without_checkpoint(
    harness: GatewayHarness,
) -> None:
    owner = await harness.signup_and_login("owner-a")
    async with harness.http(owner) as client:
        version_id = await register_version(harness, await tenant_of(client))
    other = await other_tenant(harness, owner, "other-b")
    async with harness.http(other) as client:
        for missing in (version_id, "no-such-version"):
            response = await client.post("/v1/export/jobs", json={"modelVersionId": missing})
            assert response.status_code == 404, response.text
            assert response.json()["status"] == "NOT_FOUND"
    error = await grpc_error(
        harness, other, jobs_pb2.CreateExportJobRequest(model_version_id=version_id)
    )
    assert error.status_name == "NOT_FOUND"

    async with harness.gateway.db.session() as session:
        row = await session.get(db.ModelVersion, version_id)
        assert row is not None
        row.checkpoint_artifact_id = ""
    async with harness.http(owner) as client:
        response = await client.post("/v1/export/jobs", json={"modelVersionId": version_id})
        assert response.status_code == 400, response.text
        assert response.json()["status"] == "FAILED_PRECONDITION"
        assert "no checkpoint" in response.json()["message"]


async def test_the_export_service_validates_when_it_answers(
    make_gateway: GatewayFactory, nats_server: NatsServer, database_url: str
) -> None:
    service = RulesExportService(GPU)
    harness = await make_gateway(
        nats_url=nats_server.url, database_url=database_url, export_service=service
    )
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        version_id = await register_version(harness, await tenant_of(client))
        job = await create_export(
            client, version_id, {"formats": ["tensorrt"], "half": True, "device": "cuda"}
        )
        assert job["spec"]["formats"] == ["onnx", "tensorrt"] and job["spec"]["half"]
        # The gateway passed on what its registry knows of the model.
        (asked,) = service.validated
        assert (asked.model_framework, asked.model_task, asked.model_imgsz) == (
            "ultralytics",
            "detect",
            64,
        )
        assert asked.spec.model_version_id == version_id
        # Its refusals come back with their codes and fields.
        bad = await client.post(
            "/v1/export/jobs", json={"modelVersionId": version_id, "spec": {"device": "cuda:3"}}
        )
        assert bad.status_code == 400
        assert (bad.json()["status"], rest_fields(bad.json())) == (
            "FAILED_PRECONDITION",
            ["spec.device"],
        )
        capabilities = (await client.get("/v1/export/capabilities")).json()
        assert [f["name"] for f in capabilities["formats"] if f["available"]] == [
            "onnx",
            "tensorrt",
        ]
        validated = await client.post(
            "/v1/export/spec:validate",
            json={"spec": {"formats": ["tensorrt"]}, "modelTask": "detect", "modelImgsz": 96},
        )
        assert validated.status_code == 200, validated.text
        assert validated.json()["spec"]["imgsz"] == 96


async def test_public_export_rpcs_answer_while_the_export_service_is_down(
    harness: GatewayHarness,
) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        capabilities = (await client.get("/v1/export/capabilities")).json()
        tensorrt = next(f for f in capabilities["formats"] if f["name"] == "tensorrt")
        assert (
            not tensorrt.get("available") and tensorrt["unavailableReason"] == TENSORRT_UNCONFIRMED
        )
        assert capabilities["defaultOpset"] == 17 and capabilities["devices"] == ["cpu"]
        ok = await client.post(
            "/v1/export/spec:validate", json={"spec": {}, "modelTask": "classify"}
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["spec"]["softmax"] is True
        bad = await client.post("/v1/export/spec:validate", json={"spec": {"half": True}})
        assert bad.status_code == 400
        assert rest_fields(bad.json()) == ["spec.half"]
    async with harness.channel() as channel:
        stub = export_pb2_grpc.ExportServiceStub(channel)
        response = await stub.GetCapabilities(
            export_pb2.GetCapabilitiesRequest(),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        assert list(response.opsets) == list(SUPPORTED_OPSETS)


# -- the applier ----------------------------------------------------------------------------


async def test_model_exported_records_one_export_and_is_watched(
    harness: GatewayHarness, bus: EventBus
) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        version_id = await register_version(harness, await tenant_of(client))
        job = await create_export(client, version_id)
        result = export_result(job["id"], version_id)
        await upload_files(harness, result)

        # Through NATS, as the export worker reports it.
        worker = ScriptedWorker(bus, job_id=job["id"], tenant_id=job["tenantId"])
        await worker.state(job_pb2.JOB_STATE_RUNNING)
        await worker.emit(model_exported=events_pb2.ModelExported(result=result))
        await worker.state(job_pb2.JOB_STATE_SUCCEEDED)

        async def succeeded() -> bool:
            state = (await client.get(f"/v1/jobs/{job['id']}")).json()["job"]["state"]
            return bool(state == "JOB_STATE_SUCCEEDED")

        await wait_for(succeeded, what="export job SUCCEEDED")
        version = (await client.get(f"/v1/model-versions/{version_id}")).json()["modelVersion"]
        (export,) = version["exports"]
        assert export["jobId"] == job["id"] and export["formats"] == ["onnx"]
        assert export["modelVersionId"] == version_id

        # Redelivered, and reported again by a later attempt: still the one export.
        assert not await apply_exported(harness, job, result, sequence=2)
        other = export_result(job["id"], version_id, tensorrt=True)
        assert await apply_exported(harness, job, other, attempt=1, sequence=50)
        again = (await client.get(f"/v1/model-versions/{version_id}")).json()["modelVersion"]
        assert [e["id"] for e in again["exports"]] == [export["id"]]
        assert again["exports"][0]["formats"] == ["onnx"]

        # Every file is an artifact of the job, and the stored result carries their ids.
        artifacts = (await client.get(f"/v1/jobs/{job['id']}/artifacts")).json()["artifacts"]
        by_key = {a["key"]: a for a in artifacts}
        stored = (await client.get(f"/v1/exports/{export['id']}")).json()["export"]["result"]
        assert stored["onnx"] == by_key[result.onnx.key]
        assert (
            stored["tritonModels"][0]["model"]["id"]
            == by_key[result.triton_models[0].model.key]["id"]
        )
        assert len(artifacts) == 6  # onnx, metadata, zip, parity, Triton config and model

    async with harness.channel() as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        events = [
            e
            async for e in stub.WatchJob(
                jobs_pb2.WatchJobRequest(id=job["id"]),
                metadata=(("authorization", f"Bearer {token}"),),
            )
        ]
    assert [e.export_id for e in events if e.HasField("export_id")] == [export["id"], export["id"]]


async def test_foreign_or_mismatched_export_results_are_refused(harness: GatewayHarness) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        version_id = await register_version(harness, await tenant_of(client))
        victim = await create_export(client, version_id)
        job = await create_export(client, version_id)

        forged = [
            export_result(job["id"], version_id),
            export_result(job["id"], version_id),
            export_result(job["id"], version_id),
            export_result(job["id"], "another-version"),
            export_result(job["id"], version_id),
        ]
        forged[0].onnx.key = f"jobs/{victim['id']}/model.onnx"
        forged[1].triton_models[0].config.key = f"jobs/{job['id']}/../{victim['id']}/c.pbtxt"
        forged[2].triton_repository_prefix = f"jobs/{victim['id']}/triton/"
        forged[4].tensorrt.key = "datasets/someone-else/archive.zip"
        for sequence, result in enumerate(forged, start=1):
            assert not await apply_exported(harness, job, result, sequence=sequence)

        # A training job cannot report an export either.
        async with harness.gateway.db.session() as session:
            version = await session.get(db.ModelVersion, version_id)
            assert version is not None
            training_job_id = version.job_id
        training = {"id": training_job_id, "tenantId": job["tenantId"]}
        assert not await apply_exported(
            harness, training, export_result(training_job_id, version_id)
        )

        version = (await client.get(f"/v1/model-versions/{version_id}")).json()["modelVersion"]
        assert version.get("exports", []) == []
        assert (await client.get(f"/v1/jobs/{job['id']}/artifacts")).json()["artifacts"] == []


# -- the registry ----------------------------------------------------------------------------


async def test_exports_are_listed_newest_first_and_downloaded(harness: GatewayHarness) -> None:
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        version_id = await register_version(harness, await tenant_of(client))
        first = await create_export(client, version_id)
        second = await create_export(client, version_id, {"dynamicBatch": True})
        results = {
            first["id"]: export_result(first["id"], version_id),
            second["id"]: export_result(second["id"], version_id, tensorrt=True),
        }
        for job in (first, second):
            await upload_files(harness, results[job["id"]])
            assert await apply_exported(harness, job, results[job["id"]])

        version = (await client.get(f"/v1/model-versions/{version_id}")).json()["modelVersion"]
        assert [e["jobId"] for e in version["exports"]] == [second["id"], first["id"]]
        newest, oldest = version["exports"]
        assert newest["formats"] == ["onnx", "tensorrt"]
        model = (await client.get(f"/v1/models/{version['modelId']}")).json()["model"]
        assert model["versions"][0]["exports"] == version["exports"]

        got = (await client.get(f"/v1/exports/{oldest['id']}")).json()["export"]
        assert got == oldest
        assert got["result"]["parity"]["passed"] is True

        expected = {
            "": results[first["id"]].triton_repository_zip.key,
            "package": results[first["id"]].triton_repository_zip.key,
            "onnx": results[first["id"]].onnx.key,
            "metadata": results[first["id"]].metadata_file.key,
            "parity_report": results[first["id"]].parity_report_file.key,
        }
        artifacts = {
            a["key"]: a
            for a in (await client.get(f"/v1/jobs/{first['id']}/artifacts")).json()["artifacts"]
        }
        async with httpx.AsyncClient() as s3:
            for file, key in expected.items():
                params = {"file": file} if file else {}
                response = await client.get(f"/v1/exports/{oldest['id']}:download", params=params)
                assert response.status_code == 200, (file, response.text)
                body = response.json()
                assert body["artifact"] == artifacts[key] and body["artifact"]["id"]
                assert int(body["expiresIn"]) > 0
                assert (await s3.get(body["url"])).content == key.encode()
        no_engine = await client.get(
            f"/v1/exports/{oldest['id']}:download", params={"file": "tensorrt"}
        )
        assert no_engine.status_code == 404 and no_engine.json()["status"] == "NOT_FOUND"
        engine = await client.get(
            f"/v1/exports/{newest['id']}:download", params={"file": "tensorrt"}
        )
        assert engine.status_code == 200
        assert engine.json()["artifact"]["key"] == results[second["id"]].tensorrt.key
        unknown = await client.get(f"/v1/exports/{oldest['id']}:download", params={"file": "zip"})
        assert unknown.status_code == 400
        assert (await client.get("/v1/exports/no-such-export")).status_code == 404

    async with harness.channel() as channel:
        stub = models_pb2_grpc.ModelServiceStub(channel)
        metadata = (("authorization", f"Bearer {token}"),)
        response = await stub.GetExportDownloadUrl(
            models_pb2.GetExportDownloadUrlRequest(id=oldest["id"], file="onnx"), metadata=metadata
        )
        assert response.artifact.key == results[first["id"]].onnx.key
        export = (
            await stub.GetExport(models_pb2.GetExportRequest(id=oldest["id"]), metadata=metadata)
        ).export
        assert export.result == json_format.ParseDict(oldest["result"], export_pb2.ExportResult())

    # Another tenant sees none of it.
    other = await other_tenant(harness, token, "other-tenant")
    async with harness.http(other) as client:
        assert (await client.get(f"/v1/exports/{oldest['id']}")).status_code == 404
        download = await client.get(f"/v1/exports/{oldest['id']}:download")
        assert download.status_code == 404
