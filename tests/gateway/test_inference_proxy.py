"""InferenceService through the real gateway and the real inference service: delegated
tokens, exports resolved in the caller's tenant and loaded for real, Predict with JSON,
multipart and raw image uploads answered by the served model, tenants kept apart, and
UNAVAILABLE without a service.

The inference service runs in-process (tests/gateway/served_inference.py) on the gateway's
bucket, verifying the tokens the gateway signs; every export is a real package of a tiny
model, published as the export worker publishes it.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

import grpc
import jwt
import pytest
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.inference.v1 import inference_pb2, inference_pb2_grpc
from visionmesh.common.auth import (
    Principal,
    ServiceTokenSigner,
    ServiceTokenVerifier,
    bind_principal,
    generate_signing_key,
)
from visionmesh.common.embedded import NatsServer
from visionmesh.common.errors import (
    InvalidArgument,
    Unauthenticated,
    from_rpc_error,
)
from visionmesh.common.specs.batch_inference import RESOLVED_EXPORT_SCOPE
from visionmesh.export.core.pipeline import ExportPackage
from visionmesh.gateway.api.rest import MAX_PREDICT_IMAGE_BYTES, MAX_PREDICT_IMAGES
from visionmesh.gateway.core.delegation import DelegatedTokens

from tests.gateway.conftest import GatewayFactory, dead_address
from tests.gateway.served_inference import (
    CONF,
    READY,
    InferenceHarness,
    deploy,
    deployment_settled,
    exported_version,
    picture,
    predict_request,
    without_timing,
)
from tests.gateway.test_export_jobs import (
    create_export,
    other_tenant,
    register_version,
    rest_fields,
    tenant_of,
)

pytestmark = pytest.mark.timeout(180)

# Predict never reads the gateway's database beyond the caller's credentials: its tests run
# on one backend; deployments, resolved from the registry, on both.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

JPEG = picture(1, (96, 80))
PNG = picture(2, (64, 48), kind="PNG")


# -- delegated tokens -------------------------------------------------------------------------


def test_delegated_tokens_speak_for_the_caller_and_are_reused_until_near_expiry() -> None:
    signer = ServiceTokenSigner(private_key=generate_signing_key())
    verifier = ServiceTokenVerifier(public_keys=(signer.public_key,), audience="inference")
    now = [time.time()]
    tokens = DelegatedTokens(
        signer, audience="inference", ttl_seconds=300, renew_before_seconds=60, clock=lambda: now[0]
    )
    alice = Principal(
        subject="alice", tenant_id="t-1", role="member", kind="user", scopes=("gateway:forged",)
    )
    with pytest.raises(Unauthenticated):
        tokens()
    with bind_principal(alice):
        first = tokens()
        claims = verifier.verify(first)
        # Her identity, without a "gateway:" scope she may have smuggled in.
        assert claims == Principal(subject="alice", tenant_id="t-1", role="member", kind="user")
        now[0] += 200
        assert tokens() == first
        scoped = tokens.token(extra_scopes=(RESOLVED_EXPORT_SCOPE,))
        scoped_claims = jwt.decode(scoped, options={"verify_signature": False})
        assert scoped != first and scoped_claims["scope"] == RESOLVED_EXPORT_SCOPE
        now[0] += 41  # less than 60 s of life left: a new token
        renewed = tokens()
        renewed_claims = jwt.decode(renewed, options={"verify_signature": False})
        assert renewed != first and renewed_claims["sub"] == "alice"
        assert renewed_claims["iat"] == int(now[0])
    now[0] = time.time()
    bob = Principal(subject="bob", tenant_id="t-2", role="admin", kind="api_key")
    with bind_principal(bob):
        assert verifier.verify(tokens()) == bob
    wrong_audience = ServiceTokenVerifier(public_keys=(signer.public_key,), audience="training")
    with pytest.raises(Unauthenticated):
        wrong_audience.verify(first)


# -- deployments --------------------------------------------------------------------------------


async def test_deployments_load_the_newest_export_of_the_callers_tenant(
    served: InferenceHarness,
) -> None:
    harness, service = served.gateway, served.service
    token = await harness.signup_and_login("deployer")
    version_id, export_jobs = await exported_version(served, token, exports=2)
    async with harness.http(token) as client:
        tenant_id = await tenant_of(client)
        me = (await client.get("/v1/me")).json()
        response = await client.post(
            "/v1/deployments", json={"name": "dets", "modelVersionId": version_id, "replace": True}
        )
        assert response.status_code == 200, response.text
        created = response.json()["deployment"]
        assert created["exportJobId"] == export_jobs[-1]
        assert created["modelVersionId"] == version_id and created["tenantId"] == tenant_id
        # The service keeps it in her tenant, from the export the gateway resolved.
        row = await service.store.get(tenant_id, "dets")
        assert row is not None
        assert (row.export_job_id, row.model_version_id) == (export_jobs[-1], version_id)
        assert row.created_by == me["user"]["id"]
        ready = await deployment_settled(client, "dets")
        assert ready["state"] == READY, ready
        assert ready["metadata"]["task"] == "detect" and ready["loadTime"]

        # An older export job by its id.
        by_job = await client.post(
            "/v1/deployments", json={"name": "old", "exportJobId": export_jobs[0]}
        )
        assert by_job.status_code == 200, by_job.text
        assert by_job.json()["deployment"]["exportJobId"] == export_jobs[0]
        old = await service.store.get(tenant_id, "old")
        assert old is not None and old.export_job_id == export_jobs[0]
        assert (await deployment_settled(client, "old"))["state"] == READY

        listed = (await client.get("/v1/deployments")).json()["deployments"]
        assert [(d["name"], d["exportJobId"]) for d in listed] == [
            ("dets", export_jobs[-1]),
            ("old", export_jobs[0]),
        ]
        deleted = await client.delete("/v1/deployments/old")
        assert deleted.status_code == 200, deleted.text
        assert (await client.get("/v1/deployments/old")).status_code == 404
        assert await service.store.get(tenant_id, "old") is None

        # Only the gateway gives an export.
        forged = await client.post(
            "/v1/deployments", json={"name": "x", "export": {"modelVersionId": version_id}}
        )
        assert forged.status_code == 400, forged.text
        assert rest_fields(forged.json()) == ["export"]
        assert await service.store.get(tenant_id, "x") is None

    other = await other_tenant(harness, token, "outsider")
    async with harness.http(other) as client:
        outsider_tenant = await tenant_of(client)
        for body, field in (
            ({"name": "steal", "modelVersionId": version_id}, "model_version_id"),
            ({"name": "steal", "modelVersionId": "no-such-version"}, "model_version_id"),
            ({"name": "steal", "exportJobId": export_jobs[0]}, "export_job_id"),
        ):
            response = await client.post("/v1/deployments", json=body)
            assert response.status_code == 404, response.text
            assert response.json()["message"].startswith(f"{field}: ")
            (info,) = [d for d in response.json()["details"] if "metadata" in d]
            assert info["metadata"]["field"] == field
        assert await service.store.get(outsider_tenant, "steal") is None
        assert (await client.get("/v1/deployments")).json()["deployments"] == []
        assert (await client.get("/v1/deployments/dets")).status_code == 404
        theirs = await client.post(
            "/v1/deployments/dets:predict", files=[("image", ("a.jpg", JPEG, "image/jpeg"))]
        )
        assert theirs.status_code == 404, theirs.text
        assert (await client.delete("/v1/deployments/dets")).status_code == 404
    assert await service.store.get(tenant_id, "dets") is not None


async def test_load_model_over_grpc_through_the_gateway(served: InferenceHarness) -> None:
    harness, service = served.gateway, served.service
    token = await harness.signup_and_login()
    version_id, export_jobs = await exported_version(served, token)
    auth = (("authorization", f"Bearer {token}"),)
    async with harness.http(token) as client:
        tenant_id = await tenant_of(client)
    async with harness.channel() as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        loaded = await stub.LoadModel(
            inference_pb2.LoadModelRequest(name="dets", model_version_id=version_id),
            metadata=auth,
        )
        assert loaded.deployment.export_job_id == export_jobs[0]
        row = await service.store.get(tenant_id, "dets")
        assert row is not None and row.model_version_id == version_id
        for forged, field in (
            (
                inference_pb2.LoadModelRequest(
                    name="x", export=export_pb2.ExportResult(model_version_id=version_id)
                ),
                "export",
            ),
            (
                inference_pb2.LoadModelRequest(
                    name="x", model_version_id=version_id, resolved_export_job_id="forged"
                ),
                "resolved_export_job_id",
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.LoadModel(forged, metadata=auth)
            error = from_rpc_error(failure.value)
            assert isinstance(error, InvalidArgument), error
            assert [v.field for v in error.field_violations] == [field]
        assert await service.store.get(tenant_id, "x") is None

        async def state() -> int:
            got = await stub.GetDeployment(
                inference_pb2.GetDeploymentRequest(name="dets"), metadata=auth
            )
            return int(got.deployment.state)

        deadline = time.monotonic() + 60
        while await state() == inference_pb2.DEPLOYMENT_STATE_LOADING:
            assert time.monotonic() < deadline, "dets still LOADING"
            await asyncio.sleep(0.1)
        assert await state() == inference_pb2.DEPLOYMENT_STATE_READY
        unloaded = await stub.UnloadModel(
            inference_pb2.UnloadModelRequest(name="dets"), metadata=auth
        )
        assert unloaded.deployment.name == "dets"
    assert await service.store.get(tenant_id, "dets") is None


async def test_a_version_without_a_successful_export_is_not_found(served: InferenceHarness) -> None:
    harness = served.gateway
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        tenant_id = await tenant_of(client)
        version_id = await register_version(harness, tenant_id)
        await create_export(client, version_id)  # queued, never finished
        response = await client.post(
            "/v1/deployments", json={"name": "dets", "modelVersionId": version_id}
        )
        assert response.status_code == 404, response.text
        assert "no successful export" in response.json()["message"]
    assert await served.service.store.page(tenant_id, limit=10) == []
    assert served.rpcs_started("LoadModel") == 0


# -- predict ------------------------------------------------------------------------------------


async def _deployed(served: InferenceHarness) -> tuple[str, str]:
    """A READY detect deployment "dets" of a new user; their token and tenant id."""
    harness = served.gateway
    token = await harness.signup_and_login()
    version_id, _ = await exported_version(served, token)
    async with harness.http(token) as client:
        await deploy(client, "dets", model_version_id=version_id)
        return token, await tenant_of(client)


@sqlite_only
async def test_predict_takes_multipart_files_raw_images_and_json_alike(
    served: InferenceHarness, classify_package: ExportPackage
) -> None:
    harness = served.gateway
    token, tenant_id = await _deployed(served)
    async with harness.http(token) as client:
        multipart = await client.post(
            "/v1/deployments/dets:predict",
            files=[
                ("image", ("a.jpg", JPEG, "image/jpeg")),
                ("image", ("b.png", PNG, "image/png")),
            ],
            data={"conf": str(CONF), "classes": "2, 59", "agnostic": "true", "max_det": "3"},
        )
        assert multipart.status_code == 200, multipart.text
        answer = multipart.json()
        assert answer["deployment"] == "dets" and answer["task"] == "detect"
        assert [(r["width"], r["height"]) for r in answer["results"]] == [(96, 80), (64, 48)]
        # The random-init model sees class 59 everywhere, and more than max_det of them.
        assert [len(r["detections"]) for r in answer["results"]] == [3, 3]
        detections = [d for r in answer["results"] for d in r["detections"]]
        assert {d["classId"] for d in detections} == {59}
        assert all(d["score"] >= CONF for d in detections)
        # Exactly what the service answers for these images and options itself.
        direct = await served.direct(
            tenant_id,
            "predict",
            predict_request(
                "dets", JPEG, PNG, conf=CONF, classes=[2, 59], agnostic=True, max_det=3
            ),
        )
        assert without_timing(answer) == without_timing(direct)

        raw = await client.post(
            f"/v1/deployments/dets:predict?iou=0.5&conf={CONF}",
            content=PNG,
            headers={"content-type": "image/png"},
        )
        assert raw.status_code == 200, raw.text
        direct = await served.direct(
            tenant_id, "predict", predict_request("dets", PNG, iou=0.5, conf=CONF)
        )
        assert without_timing(raw.json()) == without_timing(direct)
        assert raw.json()["results"][0]["detections"]
        # The exported model has a fixed input size: the service refuses another one.
        resized = await client.post(
            "/v1/deployments/dets:predict?imgsz=320",
            content=PNG,
            headers={"content-type": "image/png"},
        )
        assert resized.status_code == 400, resized.text
        assert rest_fields(resized.json()) == ["options.imgsz"]

        as_json = await client.post(
            "/v1/deployments/dets:predict",
            json={"images": [{"data": base64.b64encode(JPEG).decode()}], "options": {"conf": CONF}},
        )
        assert as_json.status_code == 200, as_json.text
        direct = await served.direct(tenant_id, "predict", predict_request("dets", JPEG, conf=CONF))
        assert without_timing(as_json.json()) == without_timing(direct)

        # A classifier answers with its top classes.
        classifier_version, _ = await exported_version(
            served, token, package=classify_package, framework="torchvision"
        )
        await deploy(client, "kinds", model_version_id=classifier_version)
        classified = await client.post(
            "/v1/deployments/kinds:predict",
            json={"images": [{"data": base64.b64encode(PNG).decode()}], "options": {"topK": 2}},
        )
        assert classified.status_code == 200, classified.text
        assert classified.json()["task"] == "classify"
        (result,) = classified.json()["results"]
        top = result["classifications"]
        assert len(top) == 2 and {c["className"] for c in top} <= set(
            classify_package.metadata.class_names
        )
        assert top[0]["score"] >= top[1]["score"]
        direct = await served.direct(tenant_id, "predict", predict_request("kinds", PNG, top_k=2))
        assert without_timing(classified.json()) == without_timing(direct)


@sqlite_only
async def test_bad_uploads_name_their_field_and_never_reach_the_service(
    served: InferenceHarness,
) -> None:
    harness = served.gateway
    token, _ = await _deployed(served)
    before = served.predict_calls()
    async with harness.http(token) as client:

        async def fields(**kwargs: Any) -> list[str]:
            response = await client.post("/v1/deployments/dets:predict", **kwargs)
            assert response.status_code == 400, response.text
            assert response.json()["status"] == "INVALID_ARGUMENT"
            return rest_fields(response.json())

        too_many = [
            ("image", (f"{i}.jpg", JPEG, "image/jpeg")) for i in range(MAX_PREDICT_IMAGES + 1)
        ]
        assert await fields(files=too_many) == ["images"]
        big = b"\xff" * (MAX_PREDICT_IMAGE_BYTES + 1)
        assert await fields(
            files=[
                ("image", ("ok.jpg", JPEG, "image/jpeg")),
                ("image", ("big.jpg", big, "image/jpeg")),
            ]
        ) == ["images[1].data"]
        assert await fields(content=big, headers={"content-type": "image/jpeg"}) == [
            "images[0].data"
        ]
        assert await fields(
            files=[("image", ("a.jpg", JPEG, "image/jpeg"))], data={"conf": "1.5"}
        ) == ["options.conf"]
        assert await fields(
            files=[("image", ("a.jpg", JPEG, "image/jpeg"))], data={"conf": "high"}
        ) == ["options.conf"]
        assert await fields(
            files=[("image", ("a.jpg", JPEG, "image/jpeg"))], data={"colour": "red"}
        ) == ["colour"]
        form_only = b'--b1\r\ncontent-disposition: form-data; name="conf"\r\n\r\n0.5\r\n--b1--\r\n'
        multipart = {"content-type": "multipart/form-data; boundary=b1"}
        assert await fields(content=form_only, headers=multipart) == ["images"]
        assert await fields(content=b"", headers={"content-type": "image/png"}) == [
            "images[0].data"
        ]
        malformed = await client.post(
            "/v1/deployments/dets:predict",
            content=b"--nope\r\nno headers",
            headers={"content-type": "multipart/form-data; boundary=nope"},
        )
        assert malformed.status_code == 400, malformed.text
        reasons = [d.get("reason") for d in malformed.json()["details"]]
        assert "MALFORMED_MULTIPART" in reasons

    async with harness.http() as anonymous:
        response = await anonymous.post(
            "/v1/deployments/dets:predict", files=[("image", ("a.jpg", JPEG, "image/jpeg"))]
        )
        assert response.status_code == 401
    assert served.predict_calls() == before
    # The count moves when a request does reach it.
    async with harness.http(token) as client:
        sent = await client.post(
            "/v1/deployments/dets:predict", files=[("image", ("a.jpg", JPEG, "image/jpeg"))]
        )
        assert sent.status_code == 200, sent.text
    assert served.predict_calls() == before + 1


@sqlite_only
async def test_corrupt_images_are_the_services_to_refuse_per_image(
    served: InferenceHarness,
) -> None:
    harness = served.gateway
    token, _ = await _deployed(served)
    async with harness.http(token) as client:
        mixed = await client.post(
            "/v1/deployments/dets:predict",
            files=[
                ("image", ("a.jpg", JPEG, "image/jpeg")),
                ("image", ("broken.jpg", JPEG[:200], "image/jpeg")),
            ],
        )
        assert mixed.status_code == 200, mixed.text
        good, broken = mixed.json()["results"]
        assert good["width"] == 96 and "error" not in good
        assert broken["error"]["field"] == "images[1].data" and not broken["detections"]
        all_bad = await client.post(
            "/v1/deployments/dets:predict",
            content=b"\x89PNG\r\n\x1a\n not really a png",
            headers={"content-type": "image/png"},
        )
        assert all_bad.status_code == 400, all_bad.text
        assert rest_fields(all_bad.json()) == ["images[0].data"]


@sqlite_only
async def test_predict_over_grpc_through_the_gateway(served: InferenceHarness) -> None:
    harness = served.gateway
    token, tenant_id = await _deployed(served)
    auth = (("authorization", f"Bearer {token}"),)
    async with harness.channel() as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        response = await stub.Predict(predict_request("dets", JPEG, PNG, conf=CONF), metadata=auth)
        assert [(r.width, r.height) for r in response.results] == [(96, 80), (64, 48)]
        assert response.model_version_id and any(r.detections for r in response.results)
        direct = await served.direct(
            tenant_id, "predict", predict_request("dets", JPEG, PNG, conf=CONF)
        )
        assert without_timing(response) == without_timing(direct)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.Predict(predict_request("nope", JPEG), metadata=auth)
        assert from_rpc_error(failure.value).status_name == "NOT_FOUND"
        # Another tenant's member does not see it.
        other = await other_tenant(harness, token, "grpc-outsider")
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.Predict(
                predict_request("dets", JPEG), metadata=(("authorization", f"Bearer {other}"),)
            )
        assert from_rpc_error(failure.value).status_name == "NOT_FOUND"


async def test_without_an_inference_service_calls_are_unavailable(
    make_gateway: GatewayFactory, nats_server: NatsServer, database_url: str
) -> None:
    harness = await make_gateway(
        nats_url=nats_server.url, database_url=database_url, inference_addr=dead_address()
    )
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        listed = await client.get("/v1/deployments")
        assert listed.status_code == 503, listed.text
        assert listed.json()["status"] == "UNAVAILABLE"
        batch = await client.post(
            "/v1/batch-inference/jobs",
            json={"spec": {"deployment": "dets", "inputPrefix": "in/"}},
        )
        assert batch.status_code == 503, batch.text
        # The shared rules still answer first: a malformed spec is the caller's to fix.
        bad = await client.post(
            "/v1/batch-inference/jobs", json={"spec": {"inputPrefix": "../in/"}}
        )
        assert bad.status_code == 400
        assert sorted(rest_fields(bad.json())) == ["spec.deployment", "spec.input_prefix"]
        jobs = (await client.get("/v1/jobs")).json()["jobs"]
        assert jobs == []


@sqlite_only
async def test_predict_bodies_beyond_the_json_default_and_the_documented_upload(
    served: InferenceHarness,
) -> None:
    harness = served.gateway
    token, _ = await _deployed(served)
    # A real picture with 6 MiB after its end marker, which decoders skip: 8 MiB as base64,
    # over the 4 MiB default of JSON bodies.
    large = JPEG + b"\x00" * (6 * 1024 * 1024)
    async with harness.http(token) as client:
        response = await client.post(
            "/v1/deployments/dets:predict",
            json={"images": [{"data": base64.b64encode(large).decode()}]},
        )
        assert response.status_code == 200, response.text
        (result,) = response.json()["results"]
        assert (result["width"], result["height"]) == (96, 80) and "error" not in result
        # Other routes keep the default limit.
        too_big = await client.post("/v1/datasets", content=b"{" + b" " * (5 * 1024 * 1024) + b"}")
        assert too_big.status_code == 413
        document = (await client.get("/openapi.json")).json()
    body = document["paths"]["/v1/deployments/{deployment}:predict"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "multipart/form-data", "image/*"}
    form = body["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["images"]["maxItems"] == MAX_PREDICT_IMAGES
    assert {"conf", "iou", "max_det", "top_k", "classes", "agnostic", "imgsz"} <= set(form)
