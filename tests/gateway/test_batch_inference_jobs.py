"""Batch inference jobs through the real gateway and the real inference service: input
uploads to the tenant's area, intake checked by the shared rules and the service's
ValidateBatchSpec, queued work, jobs run by the service's BatchInferenceHandler on the job
runtime (NATS), and their results paged from the JSON Lines files it writes."""

from __future__ import annotations

import io
import json
import zipfile
from typing import Any

import httpx
import pytest
from google.protobuf import json_format
from visionmesh.api.common.v1 import artifact_pb2, job_pb2
from visionmesh.api.events.v1 import events_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.events import EventBus
from visionmesh.common.subjects import JOBS_STREAM, job_request_subject
from visionmesh.gateway.core.job_events import JobEventApplier

from tests.gateway.conftest import GatewayHarness
from tests.gateway.helpers import wait_for
from tests.gateway.served_inference import (
    CONF,
    InferenceHarness,
    batch_worker,
    deploy,
    deployment_handler,
    exported_version,
    job_finished,
    picture,
)
from tests.gateway.test_export_jobs import other_tenant, rest_fields, tenant_of

pytestmark = pytest.mark.timeout(180)

JPEG = picture(1, (96, 80))
# Sorted as the job reads them; the broken one lands in the second file of two images.
INPUTS = {
    "in/000.jpg": picture(10, (96, 80)),
    "in/001.png": picture(11, (64, 48), kind="PNG"),
    "in/002.jpg": JPEG[:200],
    "in/003.jpg": picture(13, (80, 96)),
    "in/sub/004.png": picture(14, (48, 64), kind="PNG"),
}
BROKEN = "in/002.jpg"


async def _deployed_with_inputs(
    served: InferenceHarness, client: httpx.AsyncClient, token: str
) -> tuple[str, str, list[str]]:
    """A READY deployment "dets" and INPUTS in the caller's tenant, with a zip of them at
    up/inputs.zip; the tenant id, the deployed version's id and its export job ids."""
    tenant_id = await tenant_of(client)
    version_id, export_jobs = await exported_version(served, token)
    await deploy(client, "dets", model_version_id=version_id)
    store = served.gateway.gateway.store
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as handle:
        for key, data in INPUTS.items():
            await store.put_bytes(f"tenants/{tenant_id}/{key}", data)
            handle.writestr(key.removeprefix("in/"), data)
    await store.put_bytes(f"tenants/{tenant_id}/up/inputs.zip", archive.getvalue())
    return tenant_id, version_id, export_jobs


async def test_inputs_upload_to_a_fresh_prefix_of_the_callers_tenant(
    harness: GatewayHarness,
) -> None:
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
    harness = served.gateway
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        tenant_id, version_id, export_jobs = await _deployed_with_inputs(served, client, token)
        checks = served.rpcs_started("ValidateBatchSpec")
        response = await client.post(
            "/v1/batch-inference/jobs",
            json={"spec": {"deployment": "dets", "inputPrefix": "in", "options": {"conf": 0.3}}},
        )
        assert response.status_code == 200, response.text
        assert served.rpcs_started("ValidateBatchSpec") == checks + 1
        job = response.json()["job"]
        assert job["kind"] == "JOB_KIND_BATCH_INFERENCE"
        spec = job["spec"]
        assert spec["inputPrefix"] == "in/"
        assert spec["outputPrefix"] == f"batch-inference/{job['id']}/"
        assert spec["batchSize"] == 16 and ".jpg" in spec["imageExtensions"]

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
        assert work.spec.output_prefix == spec["outputPrefix"]
        assert not work.spec.HasField("export")

        # A model version instead of a deployment: its newest export travels with the job.
        by_version = await client.post(
            "/v1/batch-inference/jobs",
            json={"spec": {"modelVersionId": version_id, "inputZipKey": "up/inputs.zip"}},
        )
        assert by_version.status_code == 200, by_version.text
        assert by_version.json()["job"]["modelVersionId"] == version_id
        stored = json_format.ParseDict(
            {k: v for k, v in by_version.json()["job"]["spec"].items() if k != "@type"},
            inference_pb2.BatchInferenceSpec(),
        )
        assert stored.export.onnx.key == f"jobs/{export_jobs[-1]}/model.onnx"
        assert stored.export.model_version_id == version_id


async def test_intake_refusals_name_their_field(served: InferenceHarness) -> None:
    harness = served.gateway
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        await _deployed_with_inputs(served, client, token)
        for spec, status, fields in (
            # The shared rules, in the gateway.
            ({"inputPrefix": "in/"}, 400, ["spec.deployment"]),
            (
                {"deployment": "dets", "inputPrefix": "in/", "outputPrefix": "in/out/"},
                400,
                ["spec.output_prefix"],
            ),
            ({"deployment": "dets", "inputZipKey": "x.tar"}, 400, ["spec.input_zip_key"]),
            ({"deployment": "dets", "inputPrefix": "in/", "export": {}}, 400, ["spec.export"]),
            # The inference service's look at the inputs.
            ({"deployment": "dets", "inputPrefix": "nothing-here/"}, 400, ["spec.input_prefix"]),
            ({"deployment": "dets", "inputZipKey": "up/missing.zip"}, 400, ["spec.input_zip_key"]),
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
        assert validate.json()["spec"]["inputPrefix"] == "in/"
        assert validate.json()["spec"]["outputPrefix"] == ""  # no job yet, no default
        listed = (await client.get("/v1/jobs", params={"kind": "JOB_KIND_BATCH_INFERENCE"})).json()
        assert listed["jobs"] == []  # nothing refused was stored

    # Another tenant's deployment is not theirs to run.
    outsider = await other_tenant(harness, token, "batch-outsider")
    async with harness.http(outsider) as client:
        await served.gateway.gateway.store.put_bytes(
            f"tenants/{await tenant_of(client)}/in/000.jpg", JPEG
        )
        theirs = await client.post(
            "/v1/batch-inference/jobs", json={"spec": {"deployment": "dets", "inputPrefix": "in/"}}
        )
        assert theirs.status_code == 404, theirs.text


async def test_a_job_runs_on_the_service_and_its_results_are_paged_in_input_order(
    served: InferenceHarness, bus: EventBus
) -> None:
    harness, service = served.gateway, served.service
    token = await harness.signup_and_login()
    async with harness.http(token) as client:
        tenant_id, version_id, _ = await _deployed_with_inputs(served, client, token)
        job = (
            await client.post(
                "/v1/batch-inference/jobs",
                json={
                    "spec": {"deployment": "dets", "inputPrefix": "in/", "options": {"conf": CONF}}
                },
            )
        ).json()["job"]
        results_url = f"/v1/batch-inference/jobs/{job['id']}/results"

        empty = (await client.get(results_url)).json()
        assert empty["results"] == [] and empty["total"] == "0"
        assert empty["nextPageToken"]  # the job is not finished: ask again later

        # Two images per file: the results span three files.
        async with batch_worker(bus, service, deployment_handler(service, chunk_size=2)):
            finished = await job_finished(client, job["id"])
        assert finished["state"] == "JOB_STATE_SUCCEEDED", finished
        root = f"tenants/{tenant_id}/{job['spec']['outputPrefix']}"
        files = sorted(o.key[len(root) :] for o in await harness.gateway.store.list(root))
        assert files == [
            "coco.json",
            "predictions-00000.jsonl",
            "predictions-00001.jsonl",
            "predictions-00002.jsonl",
        ]

        async def pages(size: int) -> list[list[str]]:
            seen: list[list[str]] = []
            token_ = ""
            while True:
                params: dict[str, Any] = {"pageSize": size}
                if token_:
                    params["pageToken"] = token_
                page = (await client.get(results_url, params=params)).json()
                assert page["total"] == "5"
                keys = [r["key"] for r in page["results"]]
                if not keys:
                    return seen
                seen.append(keys)
                token_ = page["nextPageToken"]
                if not token_:
                    return seen

        keys = list(INPUTS)
        assert await pages(3) == [keys[:3], keys[3:]]
        assert await pages(2) == [keys[:2], keys[2:4], keys[4:]]
        everything = (await client.get(results_url, params={"pageSize": 100})).json()
        assert everything["nextPageToken"] == ""  # finished: the last page carries no token
        for result in everything["results"]:
            if result["key"] == BROKEN:
                assert result["error"]["reason"] and not result["detections"]
            else:
                assert "error" not in result or not result["error"]
                assert result["detections"] and result["width"] and result["height"]
        first = (await client.get(results_url, params={"pageSize": 4})).json()
        last = (
            await client.get(
                results_url, params={"pageSize": 3, "pageToken": first["nextPageToken"]}
            )
        ).json()
        assert [r["key"] for r in last["results"]] == keys[4:] and last["nextPageToken"] == ""
        coco = json.loads(await harness.gateway.store.get_bytes(root + "coco.json"))
        assert len(coco["images"]) == 4 and coco["annotations"]

        for params, field in (
            ({"pageToken": "garbage!"}, "page_token"),
            ({"pageSize": 5000}, "page_size"),
        ):
            bad = await client.get(results_url, params=params)
            assert bad.status_code == 400, bad.text
            assert rest_fields(bad.json()) == [field]

        # A model version's job, run by the service's own handler from the zip: its results
        # are the job's artifacts.
        by_version = (
            await client.post(
                "/v1/batch-inference/jobs",
                json={
                    "spec": {
                        "modelVersionId": version_id,
                        "inputZipKey": "up/inputs.zip",
                        "outputPrefix": "out",
                        "options": {"conf": CONF},
                    }
                },
            )
        ).json()["job"]
        # A token of another job's results is not this job's.
        foreign = await client.get(
            f"/v1/batch-inference/jobs/{by_version['id']}/results",
            params={"pageToken": first["nextPageToken"]},
        )
        assert foreign.status_code == 400
        async with batch_worker(bus, service):
            finished = await job_finished(client, by_version["id"])
        assert finished["state"] == "JOB_STATE_SUCCEEDED", finished
        zipped = (
            await client.get(
                f"/v1/batch-inference/jobs/{by_version['id']}/results", params={"pageSize": 10}
            )
        ).json()
        assert [r["key"] for r in zipped["results"]] == [
            f"up/inputs.zip!{key.removeprefix('in/')}" for key in keys
        ]
        artifacts = (await client.get(f"/v1/jobs/{by_version['id']}/artifacts")).json()
        assert {a["key"] for a in artifacts["artifacts"]} >= {
            f"tenants/{tenant_id}/out/predictions-00000.jsonl",
            f"tenants/{tenant_id}/out/coco.json",
        }

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
        await _deployed_with_inputs(served, client, token)
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
