"""InferenceService through the real gateway: delegated tokens, exports resolved in the
caller's tenant, Predict with file uploads over REST, and UNAVAILABLE without a service.

The inference service answering here is a small gRPC servicer behind the real server stack
(token verification for audience "inference", validation, error mapping): it records what
the gateway forwards and keeps deployments per tenant, as the real service does.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import grpc
import jwt
import pytest
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
    Unauthenticated,
    from_rpc_error,
)
from visionmesh.common.specs.batch_inference import RESOLVED_EXPORT_SCOPE
from visionmesh.gateway.api.rest import MAX_PREDICT_IMAGE_BYTES, MAX_PREDICT_IMAGES
from visionmesh.gateway.core.delegation import DelegatedTokens

from tests.gateway.conftest import GatewayFactory, dead_address
from tests.gateway.inference_service import JPEG, PNG, InferenceHarness, exported_version
from tests.gateway.test_export_jobs import (
    create_export,
    other_tenant,
    register_version,
    rest_fields,
    tenant_of,
)

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


async def test_load_model_forwards_the_newest_export_of_the_callers_tenant(
    served: InferenceHarness,
) -> None:
    harness, service = served.gateway, served.service
    token = await harness.signup_and_login("deployer")
    version_id, export_jobs = await exported_version(harness, token)
    async with harness.http(token) as client:
        tenant_id = await tenant_of(client)
        response = await client.post(
            "/v1/deployments", json={"name": "dets", "modelVersionId": version_id, "replace": True}
        )
        assert response.status_code == 200, response.text
        assert response.json()["deployment"]["exportJobId"] == export_jobs[-1]
        call = service.last("LoadModel")
        assert call.request.WhichOneof("source") == "export"
        assert call.request.export.model_version_id == version_id
        assert call.request.export.onnx.key == f"jobs/{export_jobs[-1]}/model.onnx"
        assert call.request.resolved_export_job_id == export_jobs[-1]
        assert call.request.replace and call.request.name == "dets"
        assert call.principal.tenant_id == tenant_id and call.principal.role == "admin"
        assert call.principal.scopes == (RESOLVED_EXPORT_SCOPE,)

        # An older export job by its id.
        by_job = await client.post(
            "/v1/deployments", json={"name": "old", "exportJobId": export_jobs[0]}
        )
        assert by_job.status_code == 200, by_job.text
        assert service.last("LoadModel").request.export.onnx.key.startswith(
            f"jobs/{export_jobs[0]}/"
        )

        # Reads go on with her identity, without the gateway's scope.
        listed = (await client.get("/v1/deployments")).json()["deployments"]
        assert [d["name"] for d in listed] == ["dets", "old"]
        assert service.last("ListDeployments").principal.scopes == ()
        got = await client.get("/v1/deployments/dets")
        assert got.json()["deployment"]["state"] == "DEPLOYMENT_STATE_LOADING"
        deleted = await client.delete("/v1/deployments/old")
        assert deleted.status_code == 200, deleted.text
        assert (await client.get("/v1/deployments/old")).status_code == 404

        # Only the gateway gives an export.
        forged = await client.post(
            "/v1/deployments", json={"name": "x", "export": {"modelVersionId": version_id}}
        )
        assert forged.status_code == 400, forged.text
        assert rest_fields(forged.json()) == ["export"]

    other = await other_tenant(harness, token, "outsider")
    async with harness.http(other) as client:
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
        assert (await client.get("/v1/deployments")).json()["deployments"] == []
        assert (await client.get("/v1/deployments/dets")).status_code == 404


async def test_a_version_without_a_successful_export_is_not_found(served: InferenceHarness) -> None:
    harness = served.gateway
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        version_id = await register_version(harness, await tenant_of(client))
        await create_export(client, version_id)  # queued, never finished
        response = await client.post(
            "/v1/deployments", json={"name": "dets", "modelVersionId": version_id}
        )
        assert response.status_code == 404, response.text
        assert "no successful export" in response.json()["message"]
    assert not served.service.calls


# -- predict ------------------------------------------------------------------------------------


async def _deployed(served: InferenceHarness) -> str:
    harness = served.gateway
    token = await harness.signup_and_login()
    version_id, _ = await exported_version(harness, token)
    async with harness.http(token) as client:
        response = await client.post(
            "/v1/deployments", json={"name": "dets", "modelVersionId": version_id}
        )
        assert response.status_code == 200, response.text
    return token


async def test_predict_takes_multipart_files_raw_images_and_json_alike(
    served: InferenceHarness,
) -> None:
    harness, service = served.gateway, served.service
    token = await _deployed(served)
    async with harness.http(token) as client:
        multipart = await client.post(
            "/v1/deployments/dets:predict",
            files=[
                ("image", ("a.jpg", JPEG, "image/jpeg")),
                ("image", ("b.png", PNG, "image/png")),
            ],
            data={"conf": "0.4", "classes": "0, 2", "agnostic": "true", "max_det": "7"},
        )
        assert multipart.status_code == 200, multipart.text
        assert [r["width"] for r in multipart.json()["results"]] == [len(JPEG), len(PNG)]
        request = service.last("Predict").request
        assert [i.data for i in request.images] == [JPEG, PNG]
        assert request.deployment == "dets"
        assert request.options.conf == pytest.approx(0.4)
        assert list(request.options.classes) == [0, 2]
        assert request.options.agnostic and request.options.max_det == 7
        assert not request.options.HasField("iou")

        raw = await client.post(
            "/v1/deployments/dets:predict?iou=0.5&imgsz=320",
            content=PNG,
            headers={"content-type": "image/png"},
        )
        assert raw.status_code == 200, raw.text
        request = service.last("Predict").request
        assert [i.data for i in request.images] == [PNG]
        assert request.options.iou == pytest.approx(0.5) and request.options.imgsz == 320

        as_json = await client.post(
            "/v1/deployments/dets:predict",
            json={"images": [{"data": base64.b64encode(JPEG).decode()}], "options": {"topK": 3}},
        )
        assert as_json.status_code == 200, as_json.text
        assert service.last("Predict").request.options.top_k == 3


async def test_bad_uploads_name_their_field_and_never_reach_the_service(
    served: InferenceHarness,
) -> None:
    harness, service = served.gateway, served.service
    token = await _deployed(served)
    before = len(service.calls)
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
    assert len(service.calls) == before


async def test_predict_over_grpc_through_the_gateway(served: InferenceHarness) -> None:
    harness, service = served.gateway, served.service
    token = await _deployed(served)
    async with harness.channel() as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)
        response = await stub.Predict(
            _predict_request(),
            metadata=(("authorization", f"Bearer {token}"),),
        )
        assert [r.width for r in response.results] == [len(JPEG)]
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await stub.Predict(
                inference_pb2.PredictRequest(deployment="nope", images=_predict_request().images),
                metadata=(("authorization", f"Bearer {token}"),),
            )
        assert from_rpc_error(failure.value).status_name == "NOT_FOUND"
    assert service.last("Predict").principal.scopes == ()


def _predict_request() -> inference_pb2.PredictRequest:
    from visionmesh.api.common.v1 import image_pb2

    return inference_pb2.PredictRequest(deployment="dets", images=[image_pb2.Image(data=JPEG)])


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


async def test_predict_bodies_beyond_the_json_default_and_the_documented_upload(
    served: InferenceHarness,
) -> None:
    harness = served.gateway
    token = await _deployed(served)
    large = b"\xff\xd8" + b"\x00" * (6 * 1024 * 1024)  # 8 MiB as base64: over the 4 MiB default
    async with harness.http(token) as client:
        response = await client.post(
            "/v1/deployments/dets:predict",
            json={"images": [{"data": base64.b64encode(large).decode()}]},
        )
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["width"] == len(large)
        # Other routes keep the default limit.
        too_big = await client.post("/v1/datasets", content=b"{" + b" " * (5 * 1024 * 1024) + b"}")
        assert too_big.status_code == 413
        document = (await client.get("/openapi.json")).json()
    body = document["paths"]["/v1/deployments/{deployment}:predict"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "multipart/form-data", "image/*"}
    form = body["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["images"]["maxItems"] == MAX_PREDICT_IMAGES
    assert {"conf", "iou", "max_det", "top_k", "classes", "agnostic", "imgsz"} <= set(form)
