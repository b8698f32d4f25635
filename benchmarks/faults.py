"""Fault injection against the running platform: are jobs lost or run twice when it breaks?

Starts the whole platform (NATS, S3, gateway, training worker) as real processes with
`visionmesh.stack.Stack` and its supervisor (what `make up` runs: a process that exits is
restarted with backoff), then injects one fault per scenario:

  1 kill9      SIGKILL of the training worker while a job trains (epoch >= 2)
  2 sigterm    SIGTERM of the training worker while a job trains (graceful hand-back)
  3 nats       NATS SIGKILLed (the supervisor restarts it) while `--jobs` jobs are created
               over REST by `--clients` concurrent clients; then all but `--keep` of them
               are cancelled (500 CPU trainings would take an hour) and every job is
               followed until it is terminal and its request has reached the worker
  4 gateway    SIGKILL of the gateway while a job trains

Per scenario it prints: jobs created, SUCCEEDED, lost (not terminal within the deadline,
or FAILED), duplicated (more attempts in the attempt ledger than the faults explain, more
than one model version for the job, or more metric points stored for an epoch than the
attempts that trained it reported), retry budget used (sum of the ledger's `crashes`) and
hand-backs; scenario 3 also prints the
requests that failed, the job requests published on the JOBS stream and how many
reached the worker. A table of all of them and the wall times closes the run.

    uv run --frozen python benchmarks/faults.py [--scenarios kill9,sigterm,nats,gateway] \\
        [--jobs 500] [--clients 20] [--keep 20] [--keep-data]

Exit status 0 when every scenario met its expectation, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from visionmesh.cli.synth import make_classify_dataset, zip_dataset
from visionmesh.common.events import EventBus
from visionmesh.common.jobs import AttemptLedger, AttemptRecord, AttemptState
from visionmesh.common.subjects import JOBS_STREAM
from visionmesh.stack import Ports, Stack

TERMINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"}
SUCCEEDED, FAILED, CANCELLED = "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED"

# A small torchvision classifier, as the mesh tests train it; a few seconds per epoch on a CPU.
CLASSIFY_SPEC: dict[str, Any] = {
    "framework": "torchvision",
    "task": "classify",
    "model": "resnet18",
    "epochs": 4,
    "imgsz": 64,
    "batch": 8,
    "seed": 0,
    "lr0": 0.01,
    "optimizer": "AdamW",
    "dataLoading": {"preload": True, "numWorkers": 0},
}
# The cheapest job there is: one epoch of 8 images at 32 px.
TINY_SPEC: dict[str, Any] = {**CLASSIFY_SPEC, "epochs": 1, "imgsz": 32}

T0 = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - T0:7.1f}s] {message}", flush=True)


class ScenarioError(Exception):
    """A scenario could not run to its end (a timeout, a refused request)."""


# -- results --------------------------------------------------------------------------------


@dataclass
class Row:
    name: str
    expect: str
    created: int = 0
    succeeded: int = 0
    lost: int = 0
    duplicated: int = 0
    budget_used: int = 0
    hand_backs: int = 0
    failed_requests: int | None = None
    wall_s: float = 0.0
    ok: bool = False
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)
        log(f"  {self.name}: {text}")

    def problem(self, text: str) -> None:
        self.problems.append(text)
        log(f"  {self.name}: PROBLEM: {text}")


# -- the platform -----------------------------------------------------------------------------


@dataclass
class Platform:
    stack: Stack
    rest: str
    token: str
    tmp: Path

    def client(self, timeout: float = 60.0) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.rest,
            headers={"authorization": f"Bearer {self.token}"},
            timeout=timeout,
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=64),
        )

    def log_path(self, name: str) -> Path:
        return self.stack.logs / f"{name}.log"

    def count_log_lines(self, name: str, *needles: str) -> int:
        path = self.log_path(name)
        if not path.exists():
            return 0
        lines = path.read_text(errors="replace").splitlines()
        return sum(1 for line in lines if all(needle in line for needle in needles))

    def grep_logs(self, needle: str, *, names: tuple[str, ...] = ("training", "gateway")) -> str:
        lines = []
        for name in names:
            path = self.log_path(name)
            if not path.exists():
                continue
            for line in path.read_text(errors="replace").splitlines():
                if needle in line:
                    lines.append(f"    {name}.log: {line[:400]}")
        return "\n".join(lines[-30:]) or f"    (no log line mentions {needle})"


async def start_platform(tmp: Path) -> tuple[Platform, asyncio.Task[None]]:
    stack = Stack(
        data_dir=tmp / "state",
        ports=Ports.free(),
        extra_env={
            # Short enough that a killed worker's job comes back within a minute.
            "VISIONMESH_ACK_WAIT_SECONDS": "10",
            "VISIONMESH_HEARTBEAT_SECONDS": "2",
            "VISIONMESH_PROGRESS_EVERY_BATCHES": "1",
            "VISIONMESH_DEVICE": "cpu",
        },
    )
    log(f"starting the platform (state and logs under {stack.data_dir})")
    await stack.start()
    supervisor = asyncio.create_task(
        stack.supervise(report=lambda line: log(f"[supervisor] {line}"))
    )
    rest = f"http://127.0.0.1:{stack.ports.gateway_rest}"
    credentials = {"username": f"faults-{uuid.uuid4().hex[:6]}", "password": "faults-password-1"}
    async with httpx.AsyncClient(base_url=rest, timeout=60) as client:
        signup = await client.post("/v1/auth/signup", json=credentials)
        if signup.status_code != 200:
            raise ScenarioError(f"signup: HTTP {signup.status_code} {signup.text[:300]}")
        login = await client.post("/v1/auth/login", json=credentials)
        if login.status_code != 200:
            raise ScenarioError(f"login: HTTP {login.status_code} {login.text[:300]}")
    log(f"platform up: REST {rest}, NATS {stack.nats.url}")
    return Platform(stack=stack, rest=rest, token=login.json()["accessToken"], tmp=tmp), supervisor


# -- REST helpers ---------------------------------------------------------------------------


async def call(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    *,
    within: float = 120.0,
    **kwargs: Any,
) -> httpx.Response:
    """A request retried while the gateway is unreachable or restarting (idempotent calls only)."""
    deadline = time.monotonic() + within
    while True:
        try:
            response = await client.request(method, path, **kwargs)
            if response.status_code not in (502, 503, 504):
                return response
            last = f"HTTP {response.status_code}"
        except httpx.TransportError as exc:
            last = repr(exc)
        if time.monotonic() > deadline:
            raise ScenarioError(f"{method} {path}: gateway unreachable for {within:.0f}s ({last})")
        await asyncio.sleep(0.5)


async def get_json(client: httpx.AsyncClient, path: str, **kwargs: Any) -> dict[str, Any]:
    response = await call(client, "GET", path, **kwargs)
    if response.status_code != 200:
        raise ScenarioError(f"GET {path}: HTTP {response.status_code} {response.text[:300]}")
    return dict(response.json())


async def get_job(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    return dict((await get_json(client, f"/v1/jobs/{job_id}"))["job"])


async def get_jobs(
    client: httpx.AsyncClient, job_ids: list[str], *, concurrency: int = 16
) -> dict[str, dict[str, Any]]:
    gate = asyncio.Semaphore(concurrency)

    async def one(job_id: str) -> tuple[str, dict[str, Any]]:
        async with gate:
            return job_id, await get_job(client, job_id)

    return dict(await asyncio.gather(*(one(job_id) for job_id in job_ids)))


async def wait_for(
    predicate: Callable[[], Awaitable[Any]], *, within: float, what: str, interval: float = 0.2
) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise ScenarioError(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(interval)


async def upload_dataset(client: httpx.AsyncClient, archive: Path, name: str) -> str:
    """Create -> PUT to the presigned URL -> finalize; returns the dataset id."""
    created = await client.post("/v1/datasets", json={"name": name})
    if created.status_code != 200:
        raise ScenarioError(f"create dataset: HTTP {created.status_code} {created.text[:300]}")
    body = created.json()
    async with httpx.AsyncClient(timeout=60) as s3:
        put = await s3.put(body["uploadUrl"], content=await asyncio.to_thread(archive.read_bytes))
        if put.status_code != 200:
            raise ScenarioError(f"dataset upload: HTTP {put.status_code} {put.text[:300]}")
    dataset_id = str(body["dataset"]["id"])
    finalized = await client.post(f"/v1/datasets/{dataset_id}:finalize", json={})
    if finalized.status_code != 200:
        raise ScenarioError(f"finalize: HTTP {finalized.status_code} {finalized.text[:300]}")
    return dataset_id


async def make_dataset(
    platform: Platform,
    client: httpx.AsyncClient,
    name: str,
    *,
    per_class: int,
    val: int,
    imgsz: int,
    classes: tuple[str, ...] = ("circle", "square", "triangle"),
) -> str:
    root = platform.tmp / f"{name}-data"
    archive = platform.tmp / f"{name}.zip"

    def build() -> None:
        make_classify_dataset(
            root,
            n_per_class_train=per_class,
            n_per_class_val=val,
            imgsz=imgsz,
            seed=0,
            classes=classes,
        )
        zip_dataset(root, archive)

    await asyncio.to_thread(build)
    return await upload_dataset(client, archive, name)


async def create_job(
    client: httpx.AsyncClient, dataset_id: str, spec: dict[str, Any], model_name: str
) -> str:
    response = await client.post(
        "/v1/training/jobs", json={"datasetId": dataset_id, "spec": spec, "modelName": model_name}
    )
    if response.status_code != 200:
        raise ScenarioError(f"create job: HTTP {response.status_code} {response.text[:300]}")
    return str(response.json()["job"]["id"])


async def wait_training(
    client: httpx.AsyncClient, job_id: str, *, epoch: int, within: float = 300.0
) -> dict[str, Any]:
    async def training() -> dict[str, Any] | None:
        job = await get_job(client, job_id)
        if job["state"] in TERMINAL:
            raise ScenarioError(f"job {job_id} ended ({job['state']}) before the fault")
        progress = job.get("progress") or {}
        if int(progress.get("epoch", 0)) >= epoch and progress.get("phase") == "train":
            return job
        return None

    job: dict[str, Any] = await wait_for(
        training, within=within, what=f"job {job_id} to train epoch {epoch}", interval=0.1
    )
    return job


async def wait_terminal(
    client: httpx.AsyncClient, job_ids: list[str], *, within: float
) -> dict[str, dict[str, Any]]:
    """Each job's final state, or its last seen one when the deadline passed."""
    deadline = time.monotonic() + within
    jobs: dict[str, dict[str, Any]] = {}
    pending = list(job_ids)
    last_report = time.monotonic()
    while pending:
        jobs.update(await get_jobs(client, pending))
        pending = [job_id for job_id in pending if jobs[job_id]["state"] not in TERMINAL]
        if not pending or time.monotonic() > deadline:
            break
        if time.monotonic() - last_report > 30:
            states = Counter(jobs[j]["state"] for j in pending)
            log(f"  waiting for {len(pending)} job(s) to end: {dict(states)}")
            last_report = time.monotonic()
        await asyncio.sleep(1.0)
    return jobs


class EventFollower:
    """Follows a job's SSE stream until it ends, reconnecting with Last-Event-ID when the
    gateway goes away; keeps every event it got (by sequence)."""

    def __init__(self, client: httpx.AsyncClient, job_id: str) -> None:
        self.client = client
        self.job_id = job_id
        self.events: list[dict[str, Any]] = []
        self.last_id = 0
        self.reconnects = 0
        self.finished = False

    async def run(self, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            headers = {"last-event-id": str(self.last_id)} if self.last_id else {}
            try:
                async with self.client.stream(
                    "GET", f"/v1/jobs/{self.job_id}/events", headers=headers, timeout=None
                ) as stream:
                    if stream.status_code != 200:
                        raise httpx.TransportError(f"HTTP {stream.status_code}")
                    async for line in stream.aiter_lines():
                        if line.startswith("id:"):
                            self.last_id = int(line.removeprefix("id:").strip())
                        elif line.startswith("data:"):
                            data = line.removeprefix("data:").strip()
                            if data and data != "{}":
                                self.events.append(json.loads(data))
                self.finished = True
                return
            except (httpx.TransportError, httpx.StreamError):
                self.reconnects += 1
                await asyncio.sleep(0.5)

    def terminal_states(self) -> list[str]:
        return [
            e["stateChange"]["state"]
            for e in self.events
            if e.get("stateChange", {}).get("state") in TERMINAL
        ]

    def metric_epochs_by_attempt(self, name: str) -> list[list[int]]:
        """The epochs of `name` points, one list per attempt (a RUNNING state change starts
        the next attempt's list)."""
        attempts: list[list[int]] = [[]]
        for e in self.events:
            if e.get("stateChange", {}).get("state") == "JOB_STATE_RUNNING":
                attempts.append([])
            for point in e.get("metrics", {}).get("points", []):
                if point.get("name") == name:
                    attempts[-1].append(int(point.get("epoch", 0)))
        return [epochs for epochs in attempts if epochs]


async def model_versions_by_name(client: httpx.AsyncClient) -> dict[str, list[dict[str, Any]]]:
    """Model name -> its versions (each with its jobId)."""
    names: dict[str, list[dict[str, Any]]] = {}
    token = ""
    while True:
        params: dict[str, Any] = {"pageSize": 1000}
        if token:
            params["pageToken"] = token
        page = await get_json(client, "/v1/models", params=params)
        for model in page.get("models", []):
            full = (await get_json(client, f"/v1/models/{model['id']}"))["model"]
            names[str(model["name"])] = list(full.get("versions", []))
        token = page.get("nextPageToken", "")
        if not token:
            return names


# -- NATS: the attempt ledger and the JOBS stream ---------------------------------------


async def ledger_records(
    nats_url: str, job_ids: list[str], *, bus: EventBus | None = None
) -> dict[str, AttemptRecord | None]:
    if bus is None:
        async with EventBus(
            servers=nats_url, name="faults-ledger", initial_connect_timeout=30
        ) as own:
            return await ledger_records(nats_url, job_ids, bus=own)
    ledger = await AttemptLedger.open(bus)
    return {job_id: await ledger.get(job_id) for job_id in job_ids}


async def jobs_stream_last_seq(nats_url: str) -> int:
    async with EventBus(servers=nats_url, name="faults-stream", initial_connect_timeout=30) as bus:
        info = await bus.js.stream_info(JOBS_STREAM)
        return int(info.state.last_seq)


def extra_attempts(record: AttemptRecord) -> int:
    """Attempts the ledger counts beyond the first plus one per crash, hand-back and retry."""
    return record.attempt - (1 + record.crashes + record.hand_backs + record.transient_retries)


def fmt_record(record: AttemptRecord | None) -> str:
    if record is None:
        return "no ledger record"
    return (
        f"attempt={record.attempt} state={record.state.value} crashes={record.crashes} "
        f"hand_backs={record.hand_backs} transient_retries={record.transient_retries} "
        f"request_seq={record.request_seq} worker={record.worker_id}"
    )


async def account(
    platform: Platform,
    client: httpx.AsyncClient,
    row: Row,
    jobs: dict[str, dict[str, Any]],
    *,
    model_names: dict[str, str],
    reported: dict[str, Counter[int]] | None = None,
    metric: str = "top1",
) -> dict[str, AttemptRecord | None]:
    """Fills lost / duplicated / budget / hand-backs of `row` from the jobs' final states,
    the attempt ledger, the model registry (one version for a SUCCEEDED job, none for any
    other) and, for SUCCEEDED jobs, the stored metric points per epoch: no more per epoch
    than the attempts that reported the epoch (`reported`, from the SSE stream; one when not
    given), since an epoch whose checkpoint was lost is trained, and reported, again."""
    records = await ledger_records(platform.stack.nats.url, list(jobs))
    versions = await model_versions_by_name(client)
    row.created = len(jobs)
    for job_id, job in jobs.items():
        record = records[job_id]
        state = job["state"]
        if state == SUCCEEDED:
            row.succeeded += 1
        if state not in TERMINAL or state == FAILED:
            row.lost += 1
            error = job.get("error") or {}
            row.problem(
                f"job {job_id} lost: state {state} {error}; attempts {job.get('attempts')}; "
                f"ledger: {fmt_record(record)}\n{platform.grep_logs(job_id)}"
            )
        duplicate_reasons = []
        if record is not None:
            row.budget_used += record.crashes
            row.hand_backs += record.hand_backs
            if extra_attempts(record) > 0:
                duplicate_reasons.append(
                    f"ledger counts unexplained attempts: {fmt_record(record)}"
                )
        name = model_names[job_id]
        mine = [v for v in versions.get(name, []) if v.get("jobId") == job_id]
        want = 1 if state == SUCCEEDED else 0
        if len(mine) > want:
            duplicate_reasons.append(f"{len(mine)} model versions of model {name!r} ({state})")
        elif len(mine) < want:
            row.problem(f"job {job_id} SUCCEEDED without a model version of {name!r}")
        if state == SUCCEEDED:
            points = (
                await get_json(client, f"/v1/jobs/{job_id}/metrics", params={"name": metric})
            )["points"]
            epochs = Counter(int(p.get("epoch", 0)) for p in points)
            allowed = (reported or {}).get(job_id, Counter())
            repeated = {e: n for e, n in epochs.items() if n > max(1, allowed.get(e, 0))}
            if repeated:
                duplicate_reasons.append(
                    f"{metric} points stored per epoch {dict(epochs)}, reported by attempts "
                    f"{dict(allowed) or 'once each'}"
                )
        if duplicate_reasons:
            row.duplicated += 1
            row.problem(f"job {job_id} duplicated: " + "; ".join(duplicate_reasons))
    return records


# -- the faults -------------------------------------------------------------------------------


async def wait_restarted(platform: Platform, name: str, before: int, within: float = 180.0) -> None:
    stack = platform.stack

    async def back() -> bool:
        process = stack.service(name) if name != stack.nats.name else stack.nats
        return stack.restarts.get(name, 0) > before and process.running

    await wait_for(back, within=within, what=f"the supervisor to restart {name}", interval=0.5)


def kill(platform: Platform, name: str, sig: signal.Signals) -> int:
    stack = platform.stack
    process = stack.nats if name == stack.nats.name else stack.service(name)
    if process.pid is None or not process.running:
        raise ScenarioError(f"{name} is not running")
    pid = process.pid
    os.kill(pid, sig)
    log(f"  sent {sig.name} to {name} (pid {pid})")
    return pid


async def training_job_with_fault(
    platform: Platform,
    dataset_id: str,
    row: Row,
    *,
    target: str,
    sig: signal.Signals,
    epochs: int = 4,
) -> None:
    """One classify job; `sig` to `target` once it trains epoch 2; followed to its end."""
    stack = platform.stack
    async with platform.client() as client:
        name = f"faults-{target}-{sig.name.lower()}-{uuid.uuid4().hex[:8]}"
        job_id = await create_job(client, dataset_id, {**CLASSIFY_SPEC, "epochs": epochs}, name)
        log(f"  job {job_id} created (model {name}); waiting for it to train epoch 2")
        follower = EventFollower(platform.client(timeout=30), job_id)
        following = asyncio.create_task(follower.run(within=900))
        try:
            job = await wait_training(client, job_id, epoch=2)
            log(f"  job at epoch {job['progress'].get('epoch')}/{epochs}, phase train: fault now")
            restarts = stack.restarts.get(target, 0)
            process = stack.service(target)
            kill(platform, target, sig)
            if sig == signal.SIGTERM:
                await wait_for(
                    lambda: _exited(process), within=90, what=f"{target} to exit on SIGTERM"
                )
                row.note(f"{target} exited with code {process.returncode} after SIGTERM")
                if process.returncode != 0:
                    row.problem(f"{target} exit code {process.returncode}:\n{process.log_tail()}")
            if target == "gateway":
                # The worker trains on while the gateway is down; clients retry.
                await asyncio.sleep(0.5)
            await wait_restarted(platform, target, restarts)
            log(f"  {target} restarted by the supervisor; following job {job_id} to its end")
            jobs = await wait_terminal(client, [job_id], within=300)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(following), timeout=30)
        finally:
            following.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await following
            await follower.client.aclose()
        job = jobs[job_id]
        per_attempt = follower.metric_epochs_by_attempt("top1")
        reported = Counter(epoch for seen in per_attempt for epoch in set(seen))
        records = await account(
            platform,
            client,
            row,
            jobs,
            model_names={job_id: name},
            reported={job_id: reported},
        )
        record = records[job_id]
        row.note(
            f"job {job_id}: {job['state']}, gateway attempts={job.get('attempts')}; "
            f"ledger {fmt_record(record)}"
        )
        terminal = follower.terminal_states()
        row.note(
            f"SSE: {len(follower.events)} events, {follower.reconnects} reconnect(s), "
            f"terminal {terminal}, top1 epochs per attempt {per_attempt}"
        )
        if len(terminal) != 1:
            row.problem(f"SSE showed {len(terminal)} terminal state changes: {terminal}")
        for number, seen in enumerate(per_attempt, 1):
            if len(seen) != len(set(seen)):
                row.problem(f"attempt {number} has a top1 point twice for an epoch: {seen}")
        rerun = sorted(epoch for epoch, n in reported.items() if n > 1)
        if rerun:
            row.note(
                f"epoch(s) {rerun} trained again by a later attempt (no checkpoint of them "
                "was in the store yet): their top1 points are stored once per attempt"
            )
        if job["state"] == SUCCEEDED:
            points = (
                await get_json(client, f"/v1/jobs/{job_id}/metrics", params={"name": "top1"})
            )["points"]
            stored = sorted(int(p.get("epoch", 0)) for p in points)
            row.note(f"stored top1 epochs: {stored}")
            if sorted(set(stored)) != list(range(1, epochs + 1)):
                row.problem(f"stored top1 epochs {stored}, want each of 1..{epochs}")


async def _exited(process: Any) -> bool:
    return not process.running


async def scenario_kill9(platform: Platform, dataset_id: str) -> Row:
    row = Row("1 kill -9 worker", "0 lost, 0 dup, budget 1, 0 hand-backs")
    await training_job_with_fault(platform, dataset_id, row, target="training", sig=signal.SIGKILL)
    row.ok = (row.lost, row.duplicated, row.budget_used, row.hand_backs) == (0, 0, 1, 0)
    return row


async def scenario_sigterm(platform: Platform, dataset_id: str) -> Row:
    row = Row("2 SIGTERM worker", "0 lost, 0 dup, budget 0, 1 hand-back")
    await training_job_with_fault(platform, dataset_id, row, target="training", sig=signal.SIGTERM)
    row.ok = (row.lost, row.duplicated, row.budget_used, row.hand_backs) == (0, 0, 0, 1)
    return row


async def scenario_gateway(platform: Platform, dataset_id: str) -> Row:
    row = Row("4 gateway kill -9", "0 lost, 0 dup, budget 0, events once")
    await training_job_with_fault(platform, dataset_id, row, target="gateway", sig=signal.SIGKILL)
    row.ok = (row.lost, row.duplicated, row.budget_used) == (0, 0, 0) and not row.problems
    return row


async def scenario_nats(
    platform: Platform, dataset_id: str, *, jobs: int, clients: int, keep: int
) -> Row:
    row = Row(
        f"3 NATS restart, {jobs} creates",
        "0 failed requests, 0 lost, 0 dup, each job reaches the worker once",
    )
    stack = platform.stack
    nats_name = stack.nats.name
    seq_before = await jobs_stream_last_seq(stack.nats.url)
    statuses: Counter[str] = Counter()
    accepted: dict[int, str] = {}  # creation index -> job id
    failures: list[str] = []
    next_index = iter(range(jobs))
    kill_after = max(1, jobs // 5)
    run_id = uuid.uuid4().hex[:6]

    async def creator(client: httpx.AsyncClient) -> None:
        for index in next_index:
            name = f"faults-nats-{run_id}-{index:04d}"
            body = {"datasetId": dataset_id, "spec": TINY_SPEC, "modelName": name}
            try:
                # Never retried: without an idempotency key a retry could create a second job.
                response = await client.post("/v1/training/jobs", json=body)
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
                failures.append(f"#{index}: {exc!r}")
                continue
            statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                accepted[index] = str(response.json()["job"]["id"])
            else:
                failures.append(f"#{index}: HTTP {response.status_code} {response.text[:200]}")

    async def fault() -> None:
        await wait_for(
            _true_when(lambda: len(accepted) + len(failures) >= kill_after),
            within=600,
            what=f"{kill_after} creations",
            interval=0.05,
        )
        restarts = stack.restarts.get(nats_name, 0)
        kill(platform, nats_name, signal.SIGKILL)
        log(f"  NATS killed after {len(accepted) + len(failures)} creations")
        await wait_restarted(platform, nats_name, restarts)
        log(f"  NATS restarted ({len(accepted) + len(failures)} creations so far)")

    started = time.monotonic()
    async with platform.client() as client:
        fault_task = asyncio.create_task(fault())
        await asyncio.gather(*(creator(client) for _ in range(clients)))
        create_s = time.monotonic() - started
        log(
            f"  {jobs} creations in {create_s:.1f}s ({jobs / create_s:.0f}/s): "
            f"HTTP statuses {dict(statuses)}"
        )
        await fault_task
        row.failed_requests = jobs - statuses["200"]
        for failure in failures[:10]:
            row.problem(f"request failed: {failure}")
        job_ids = [accepted[i] for i in sorted(accepted)]
        model_names = {accepted[i]: f"faults-nats-{run_id}-{i:04d}" for i in accepted}
        if len(set(job_ids)) != len(job_ids):
            row.problem("the gateway returned the same job id for two creations")

        # Accepted = published: every job leaves PENDING once the relay has its request in
        # the JOBS stream. (A job cancelled before that is never published, by design, so
        # the cancels wait for this.)
        async def all_published() -> bool:
            states = Counter(job["state"] for job in (await get_jobs(client, job_ids)).values())
            log(f"  job states: {dict(states)}")
            return states["JOB_STATE_PENDING"] == 0

        published_s = time.monotonic()
        try:
            await wait_for(all_published, within=300, what="every job to be queued", interval=2)
            row.note(f"all accepted jobs queued {time.monotonic() - published_s:.1f}s after")
        except ScenarioError as exc:
            row.problem(str(exc))
        seq_published = await jobs_stream_last_seq(stack.nats.url)

        # Keep an evenly spread `keep` of them training; cancel the rest.
        stride = max(1, len(job_ids) // keep) if keep else 0
        kept = set(job_ids[::stride][:keep]) if keep else set()
        to_cancel = [j for j in job_ids if j not in kept]
        cancel_statuses: Counter[str] = Counter()
        queue = iter(to_cancel)

        async def canceller() -> None:
            for job_id in queue:
                response = await call(client, "POST", f"/v1/jobs/{job_id}:cancel", json={})
                cancel_statuses[str(response.status_code)] += 1

        await asyncio.gather(*(canceller() for _ in range(clients)))
        log(f"  cancelled {len(to_cancel)} job(s): HTTP statuses {dict(cancel_statuses)}")
        row.note(f"creations {create_s:.1f}s; kept {len(kept)} to train, cancelled the rest")

        log(f"  waiting for all {len(job_ids)} jobs to end")
        final = await wait_terminal(client, job_ids, within=max(300.0, 30.0 * len(kept)))
        stuck = [j for j in job_ids if final[j]["state"] not in TERMINAL]
        if stuck:
            await recover_stuck_worker(platform, client, row, stuck, final)

        # A job cancelled in the gateway is terminal at once; its request still reaches the
        # worker, which must take it once and run nothing. Wait for the queue to drain.
        log("  waiting for the worker to take every request (attempt ledger)")
        async with EventBus(
            servers=stack.nats.url, name="faults-drain", initial_connect_timeout=30
        ) as bus:
            deadline, last_change, seen = time.monotonic() + 600, time.monotonic(), -1
            while time.monotonic() < deadline and time.monotonic() - last_change < 90:
                records = await ledger_records(stack.nats.url, job_ids, bus=bus)
                done = sum(1 for r in records.values() if r and r.state is AttemptState.ENDED)
                if done != seen:
                    seen, last_change = done, time.monotonic()
                    log(f"  ledger: {done}/{len(job_ids)} requests taken and ended")
                if done == len(job_ids):
                    break
                await asyncio.sleep(5)
        records = await account(platform, client, row, final, model_names=model_names)
        seq_after = await jobs_stream_last_seq(stack.nats.url)

    states = Counter(job["state"] for job in final.values())
    reached = sum(1 for r in records.values() if r is not None)
    ended = sum(1 for r in records.values() if r is not None and r.state is AttemptState.ENDED)
    published = seq_after - seq_before
    if seq_after != seq_published:
        row.note(f"JOBS stream sequence moved from {seq_published} to {seq_after} after queueing")
    duplicate_verdicts = platform.count_log_lines("training", "job request not run", "duplicate")
    row.note(f"final states: {dict(states)}")
    row.note(
        f"accepted {len(job_ids)}; JOBS stream messages published {published}; requests that "
        f"reached the worker (ledger record) {reached}, ended in the ledger {ended}"
    )
    row.note(f"worker DUPLICATE verdicts in training.log: {duplicate_verdicts}")
    kept_states = Counter(final[j]["state"] for j in kept)
    row.note(f"kept-to-train jobs: {dict(kept_states)}")
    if published != len(job_ids):
        row.problem(f"{published} job requests published for {len(job_ids)} accepted jobs")
    missing = [j for j, r in records.items() if r is None]
    for job_id in missing[:5]:
        row.problem(
            f"job {job_id} ({final[job_id]['state']}) never reached the worker\n"
            f"{platform.grep_logs(job_id)}"
        )
    if missing:
        row.problem(f"{len(missing)} accepted job(s) never reached the worker")
    row.ok = (
        row.failed_requests == 0
        and row.lost == 0
        and row.duplicated == 0
        and not missing
        and published == len(job_ids)
    )
    return row


async def recover_stuck_worker(
    platform: Platform,
    client: httpx.AsyncClient,
    row: Row,
    stuck: list[str],
    final: dict[str, dict[str, Any]],
) -> None:
    """Jobs past the deadline are counted lost (from `final`); they are described, and the
    worker holding one is SIGKILLed (as an operator would) so the queue and the next
    scenarios can go on. Their state after the recovery is noted, not counted."""
    records = await ledger_records(platform.stack.nats.url, stuck)
    running = [
        j for j in stuck if final[j]["state"] in {"JOB_STATE_RUNNING", "JOB_STATE_CANCELLING"}
    ]
    for job_id in stuck:
        job = final[job_id]
        row.problem(
            f"job {job_id} not terminal within the deadline: {job['state']}, progress "
            f"{job.get('progress')}, updated events up to sequence {job.get('lastEventSequence')}; "
            f"ledger {fmt_record(records[job_id])}\n{platform.grep_logs(job_id)}"
        )
    if not running:
        return
    training = platform.stack.service("training")
    row.problem(
        f"{len(running)} job(s) RUNNING past the deadline: the worker (pid {training.pid}) "
        "is stuck on it; SIGKILLing it so the queue drains"
    )
    restarts = platform.stack.restarts.get("training", 0)
    kill(platform, "training", signal.SIGKILL)
    await wait_restarted(platform, "training", restarts)
    after = await wait_terminal(client, stuck, within=300)
    records = await ledger_records(platform.stack.nats.url, stuck)
    for job_id in stuck:
        row.note(
            f"after the worker restart job {job_id} is {after[job_id]['state']}; "
            f"ledger {fmt_record(records[job_id])}"
        )


def _true_when(condition: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return condition()

    return check


# -- the run ------------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    head = (
        f"{'scenario':<30} {'created':>7} {'succ':>5} {'lost':>5} {'dup':>5} {'budget':>6} "
        f"{'handbk':>6} {'req fail':>8} {'wall s':>7}  verdict"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        failed = "-" if r.failed_requests is None else str(r.failed_requests)
        lines.append(
            f"{r.name:<30} {r.created:>7} {r.succeeded:>5} {r.lost:>5} {r.duplicated:>5} "
            f"{r.budget_used:>6} {r.hand_backs:>6} {failed:>8} {r.wall_s:>7.1f}  "
            f"{'as expected' if r.ok else 'UNEXPECTED'} ({r.expect})"
        )
    return "\n".join(lines)


async def main(args: argparse.Namespace) -> int:
    wanted = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(wanted) - {"kill9", "sigterm", "nats", "gateway"}
    if unknown:
        raise SystemExit(f"unknown scenario(s): {sorted(unknown)}")
    tmp = Path(tempfile.mkdtemp(prefix="vm-faults-"))
    rows: list[Row] = []
    total = time.monotonic()
    platform, supervisor = await start_platform(tmp)
    try:
        async with platform.client() as client:
            log("uploading the datasets")
            dataset = await make_dataset(platform, client, "shapes", per_class=24, val=6, imgsz=64)
            tiny = await make_dataset(
                platform, client, "tiny", per_class=4, val=2, imgsz=32, classes=("circle", "square")
            )
        scenarios: dict[str, Callable[[], Awaitable[Row]]] = {
            "kill9": lambda: scenario_kill9(platform, dataset),
            "sigterm": lambda: scenario_sigterm(platform, dataset),
            "nats": lambda: scenario_nats(
                platform, tiny, jobs=args.jobs, clients=args.clients, keep=args.keep
            ),
            "gateway": lambda: scenario_gateway(platform, dataset),
        }
        for key in wanted:
            log(f"=== scenario {key}")
            started = time.monotonic()
            try:
                row = await scenarios[key]()
            except Exception as exc:  # one scenario failing must not hide the others' figures
                row = Row(key, "ran to its end")
                row.problem(f"scenario did not finish: {exc!r}")
                for name in ("training", "gateway"):
                    log(f"  last lines of {name}.log:\n{platform.stack.service(name).log_tail(15)}")
            row.wall_s = time.monotonic() - started
            rows.append(row)
            log(f"=== {row.name}: {'as expected' if row.ok else 'UNEXPECTED'} in {row.wall_s:.0f}s")
    finally:
        supervisor.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await supervisor
        log(f"restarts by the supervisor: {dict(platform.stack.restarts)}")
        await platform.stack.stop()
        if args.keep_data:
            log(f"state and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(table(rows))
    print(f"total wall time {time.monotonic() - total:.0f}s")
    for r in rows:
        for problem in r.problems:
            print(f"\n[{r.name}] {problem}")
    return 0 if rows and all(r.ok for r in rows) else 1


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="kill9,sigterm,nats,gateway")
    parser.add_argument("--jobs", type=int, default=500, help="jobs created in scenario 3")
    parser.add_argument("--clients", type=int, default=20, help="concurrent REST clients")
    parser.add_argument("--keep", type=int, default=20, help="scenario 3 jobs left to train")
    parser.add_argument("--keep-data", action="store_true", help="keep state and logs")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
