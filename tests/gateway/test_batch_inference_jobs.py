"""Batch inference jobs through the real gateway: input uploads to the tenant's area, intake
checked by the shared rules and the inference service, queued work, and results paged from
the JSON Lines files a worker writes to the object store."""

from __future__ import annotations

from typing import Any

import httpx
from google.protobuf import json_format
from visionmesh.api.common.v1 import artifact_pb2, job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.events import EventBus
from visionmesh.common.subjects import JOBS_STREAM, job_request_subject
from visionmesh.gateway.core.job_events import JobEventApplier
from visionmesh.gateway.db import models as db

from tests.gateway.conftest import GatewayHarness
from tests.gateway.helpers import wait_for
from tests.gateway.inference_service import JPEG, InferenceHarness, exported_version
from tests.gateway.test_export_jobs import other_tenant, rest_fields, tenant_of


async def deploy(client: httpx.AsyncClient, harness: GatewayHarness, token: str) -> str:
    version_id, _ = await exported_version(harness, token)
    response = await client.post(
        "/v1/deployments", json={"name": "dets", "modelVersionId": version_id}
    )
    assert response.status_code == 200, response.text
    return version_id


async def test_inputs_upload_to_a_fresh_prefix_of_the_callers_tenant(
    served: InferenceHarness,
) -> None:
    harness = served.gateway
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        tenant_id = await tenant_of(client)
        response = await client.post(
            "/v1/batch-inference/uploads", json={"fileNames": ["a.jpg", "b c.png"], "zip": True}
        )
        assert response.status_code == 200, response.text
        body = response.json()
        prefix = body["inputPrefix"]
        assert prefix.startswith("batch-inputs/") and prefix.endswith("/")
        assert [(u["fileName"], u["key"]) for u in body["uploads"]] == [
            ("a.jpg", prefix + "a.jpg"),
            ("b c.png", prefix + "b c.png"),
            ("inputs.zip", prefix + "inputs.zip"),
        ]
        assert int(body["expiresIn"]) > 0
        async with httpx.AsyncClient(timeout=30) as s3:
            for upload in body["uploads"]:
                put = await s3.put(upload["url"], content=JPEG)
                assert put.status_code == 200, put.text
        store = harness.gateway.store
        for upload in body["uploads"]:
            assert await store.get_bytes(f"tenants/{tenant_id}/{upload['key']}") == JPEG
        again = (await client.post("/v1/batch-inference/uploads", json={"zip": True})).json()
        assert again["inputPrefix"] != prefix

        for bad, field in (
            ({}, "file_names"),
            ({"fileNames": [".."]}, "file_names[0]"),
            ({"fileNames": ["ok.jpg", "a/b.jpg"]}, "file_names[1]"),
        ):
            refused = await client.post("/v1/batch-inference/uploads", json=bad)
            assert refused.status_code == 400, refused.text
            assert rest_fields(refused.json()) == [field]


async def test_a_job_is_queued_with_the_spec_the_service_accepted(
    served: InferenceHarness, bus: EventBus
) -> None:
    harness, service = served.gateway, served.service
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        tenant_id = await tenant_of(client)
        version_id = await deploy(client, harness, token)
        response = await client.post(
            "/v1/batch-inference/jobs",
            json={"spec": {"deployment": "dets", "inputPrefix": "in", "options": {"conf": 0.3}}},
        )
        assert response.status_code == 200, response.text
        job = response.json()["job"]
        assert job["kind"] == "JOB_KIND_BATCH_INFERENCE"
        spec = job["spec"]
        assert spec["inputPrefix"] == "in/"
        assert spec["outputPrefix"] == f"batch-inference/{job['id']}/"
        assert spec["batchSize"] == 16 and ".jpg" in spec["imageExtensions"]
        checked = service.last("ValidateBatchSpec")
        assert checked.request.spec.output_prefix == spec["outputPrefix"]
        assert checked.principal.tenant_id == tenant_id and checked.principal.scopes == ()

        async def queued() -> bool:
            state = (await client.get(f"/v1/jobs/{job['id']}")).json()["job"]["state"]
            return bool(state == "JOB_STATE_QUEUED")

        await wait_for(queued, what="batch job QUEUED by the outbox relay")
        message = await bus.js.get_last_msg(
            JOBS_STREAM, job_request_subject(job_pb2.JOB_KIND_BATCH_INFERENCE)
        )
        request = events_pb2.JobRequest.FromString(message.data or b"")
        assert request.job_id == job["id"] and request.tenant_id == tenant_id
        work = request.batch_inference
        assert work.artifact_prefix == f"jobs/{job['id']}/"
        assert work.spec.deployment == "dets" and work.spec.options.conf > 0.29
        assert not work.spec.HasField("export")

        # A model version instead of a deployment: its newest export travels with the job.
        by_version = await client.post(
            "/v1/batch-inference/jobs",
            json={"spec": {"modelVersionId": version_id, "inputZipKey": "up/x.zip"}},
        )
        assert by_version.status_code == 200, by_version.text
        assert by_version.json()["job"]["modelVersionId"] == version_id
        checked = service.last("ValidateBatchSpec")
        assert checked.request.spec.export.model_version_id == version_id
        assert checked.principal.scopes == ("gateway:resolved-export",)
        stored = json_format.ParseDict(
            {k: v for k, v in by_version.json()["job"]["spec"].items() if k != "@type"},
            inference_pb2.BatchInferenceSpec(),
        )
        assert stored.export.onnx.key.endswith("/model.onnx")


async def test_intake_refusals_name_their_field(served: InferenceHarness) -> None:
    harness, service = served.gateway, served.service
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        await deploy(client, harness, token)
        for spec, status, fields in (
            ({"inputPrefix": "in/"}, 400, ["spec.deployment"]),
            (
                {"deployment": "dets", "inputPrefix": "in/", "outputPrefix": "in/out/"},
                400,
                ["spec.output_prefix"],
            ),
            ({"deployment": "dets", "inputZipKey": "x.tar"}, 400, ["spec.input_zip_key"]),
            ({"deployment": "dets", "inputPrefix": "in/", "export": {}}, 400, ["spec.export"]),
        ):
            response = await client.post("/v1/batch-inference/jobs", json={"spec": spec})
            assert response.status_code == status, response.text
            assert rest_fields(response.json()) == fields
        missing = await client.post(
            "/v1/batch-inference/jobs", json={"spec": {"deployment": "nope", "inputPrefix": "in/"}}
        )
        assert missing.status_code == 404, missing.text
        unknown_version = await client.post(
            "/v1/batch-inference/jobs",
            json={"spec": {"modelVersionId": "no-such", "inputPrefix": "in/"}},
        )
        assert unknown_version.status_code == 404, unknown_version.text
        assert unknown_version.json()["message"].startswith("spec.model_version_id: ")
        validate = await client.post(
            "/v1/batch-inference/spec:validate",
            json={"spec": {"deployment": "dets", "inputPrefix": "in"}},
        )
        assert validate.status_code == 200, validate.text
        assert validate.json()["spec"]["outputPrefix"] == ""  # no job yet, no default
        listed = (await client.get("/v1/jobs", params={"kind": "JOB_KIND_BATCH_INFERENCE"})).json()
        assert listed["jobs"] == []  # nothing refused was stored
    assert service.last("ValidateBatchSpec").request.spec.deployment == "dets"


def _result_line(index: int) -> bytes:
    result = inference_pb2.ImageResult(key=f"in/{index:03d}.jpg", width=index, height=2)
    return json_format.MessageToJson(result, indent=None).encode()


async def test_results_are_paged_in_input_order_across_files(served: InferenceHarness) -> None:
    harness = served.gateway
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        tenant_id = await tenant_of(client)
        await deploy(client, harness, token)
        job = (
            await client.post(
                "/v1/batch-inference/jobs",
                json={"spec": {"deployment": "dets", "inputPrefix": "in/"}},
            )
        ).json()["job"]
        root = f"tenants/{tenant_id}/{job['spec']['outputPrefix']}"
        results_url = f"/v1/batch-inference/jobs/{job['id']}/results"

        empty = (await client.get(results_url)).json()
        assert empty["results"] == [] and empty["total"] == "0"
        assert empty["nextPageToken"]  # the job is not finished: ask again later

        store = harness.gateway.store
        # Uneven files, as a resumed worker with another chunk size may leave them.
        await store.put_bytes(
            root + "predictions-00000.jsonl", b"\n".join(map(_result_line, range(3))) + b"\n"
        )
        await store.put_bytes(
            root + "predictions-00001.jsonl", b"\n".join(map(_result_line, range(3, 5)))
        )
        await store.put_bytes(root + "coco.json", b"{}")
        await store.put_bytes(root + "predictions-notes.txt", b"not results")

        async def pages(size: int) -> list[list[int]]:
            seen: list[list[int]] = []
            token_ = ""
            while True:
                params: dict[str, Any] = {"pageSize": size}
                if token_:
                    params["pageToken"] = token_
                page = (await client.get(results_url, params=params)).json()
                assert page["total"] == "5"
                widths = [r["width"] for r in page["results"]]
                if not widths:
                    return seen
                seen.append(widths)
                token_ = page["nextPageToken"]
                if not token_:
                    return seen

        assert await pages(2) == [[0, 1], [2, 3], [4]]
        assert await pages(100) == [[0, 1, 2, 3, 4]]
        first = (await client.get(results_url, params={"pageSize": 4})).json()
        assert first["results"][3]["key"] == "in/003.jpg"

        # Finished: the last page carries no token.
        async with harness.gateway.db.session() as session:
            row = await session.get(db.Job, job["id"])
            assert row is not None
            row.state = job_pb2.JOB_STATE_SUCCEEDED
        last = (
            await client.get(
                results_url, params={"pageSize": 3, "pageToken": first["nextPageToken"]}
            )
        ).json()
        assert [r["width"] for r in last["results"]] == [4] and last["nextPageToken"] == ""

        for params, field in (
            ({"pageToken": "garbage!"}, "page_token"),
            ({"pageSize": 5000}, "page_size"),
        ):
            bad = await client.get(results_url, params=params)
            assert bad.status_code == 400, bad.text
            assert rest_fields(bad.json()) == [field]
        # A token of another job's results is not this job's.
        other_job = (
            await client.post(
                "/v1/batch-inference/jobs",
                json={"spec": {"deployment": "dets", "inputPrefix": "in/"}},
            )
        ).json()["job"]
        foreign = await client.get(
            f"/v1/batch-inference/jobs/{other_job['id']}/results",
            params={"pageToken": first["nextPageToken"]},
        )
        assert foreign.status_code == 400

        # GET /v1/jobs/{id} is still the job itself.
        status = (await client.get(f"/v1/jobs/{job['id']}")).json()["job"]
        assert status["id"] == job["id"] and status["state"] == "JOB_STATE_SUCCEEDED"

        # Not a batch job.
        export_job = next(
            j
            for j in (await client.get("/v1/jobs")).json()["jobs"]
            if j["kind"] == "JOB_KIND_EXPORT"
        )
        wrong_kind = await client.get(f"/v1/batch-inference/jobs/{export_job['id']}/results")
        assert wrong_kind.status_code == 400 and rest_fields(wrong_kind.json()) == ["id"]

    outsider = await other_tenant(harness, token, "outsider")
    async with harness.http(outsider) as client:
        assert (await client.get(results_url)).status_code == 404


async def test_result_files_under_the_output_prefix_are_the_jobs_artifacts(
    served: InferenceHarness,
) -> None:
    harness = served.gateway
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        tenant_id = await tenant_of(client)
        await deploy(client, harness, token)
        job = (
            await client.post(
                "/v1/batch-inference/jobs",
                json={"spec": {"deployment": "dets", "inputPrefix": "in/", "outputPrefix": "out"}},
            )
        ).json()["job"]
        applier = JobEventApplier(db=harness.gateway.db, watchers=harness.gateway.watchers)

        async def report(key: str, sequence: int) -> bool:
            ref = artifact_pb2.ArtifactRef(name=key.rsplit("/", 1)[-1], kind="results", key=key)
            return await applier.apply(
                events_pb2.JobEvent(
                    job_id=job["id"],
                    tenant_id=tenant_id,
                    attempt=1,
                    worker_sequence=sequence,
                    artifact=events_pb2.JobArtifactUploaded(artifact=ref),
                )
            )

        assert await report(f"tenants/{tenant_id}/out/predictions-00000.jsonl", 1)
        assert await report(f"jobs/{job['id']}/summary.json", 2)
        await report(f"tenants/{tenant_id}/in/a.jpg", 3)  # an input is not a result
        await report(f"tenants/{tenant_id}/out/../in/a.jpg", 4)
        await report("tenants/someone-else/out/predictions-00000.jsonl", 5)
        artifacts = (await client.get(f"/v1/jobs/{job['id']}/artifacts")).json()["artifacts"]
        assert sorted(a["key"] for a in artifacts) == sorted(
            [f"tenants/{tenant_id}/out/predictions-00000.jsonl", f"jobs/{job['id']}/summary.json"]
        )
