"""Inference benchmark: the served paths against what they wrap, dynamic batching, and a
redeploy under load.

For yolo11n at 640 (detect, random init from its YAML: no weights download here) and a
resnet18 classifier at 224 (torchvision, random init), each exported by the pipeline an export
job runs (`run_export`, dynamic batch, max batch 8) and published to a real SeaweedFS S3 as
the export worker does, a real InferenceService runs in this process (SQLite file, gRPC and
KServe ports, reconcile loop) and loads them as deployments through its core with a
gateway-scoped caller. ONNX Runtime picks its device itself (CUDA when there is one). From
one run it prints, per model:
  1. served Predict over gRPC (grpc.aio client, image bytes, a minted service token) against
     the same pipeline in-process (`core.predictor(model).predict` inside
     `manager.acquire`): throughput ratio at each --concurrency (goal >= 0.9);
  2. served Predict against what a user would otherwise run on the same images and device:
     Ultralytics `YOLO(pt).predict` (one instance per worker thread, default conf, image
     bytes decoded by cv2) for the detector; torch eager with torchvision transforms (Resize,
     ToTensor, Normalize, softmax top-5) for the classifier (goal >= 1.3);
  3. KServe v2 infer with binary tensors (tritonclient gRPC and HTTP aio, a preprocessed
     float32 tensor) against a raw onnxruntime InferenceSession.run on the same tensor with
     the same threads and providers, batch 1 (goal >= 0.9);
  4. throughput of 8 concurrent callers with dynamic batching (max batch 8, 2 ms queue
     delay) against without (max batch 1): in-process through a Predictor over its own
     DynamicBatcher, and over gRPC against a second replica configured with max_batch_size 1;
  5. p50 / p99 latency of every path above.
Then 6.: clients hammer gRPC Predict while the deployment is replaced by the other model's
export (replace=True); it prints failed requests (goal 0) and those served during the swap.

Every figure is a time-boxed loop (--seconds in all, after a warm-up), throughput = completed
calls / wall time; the paths a ratio compares are measured in alternating stretches (--rounds)
of this run, so that load from elsewhere on the machine hits them alike. Clients share the
service's process and event loop, so the served paths also pay for their client.

    uv run python benchmarks/inference.py [--seconds 5] [--models yolo11n,resnet18]
        [--concurrency 1,4] [--batch-concurrency 8] [--rounds 3] [--threads 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import math
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import grpc
import numpy as np
import onnxruntime
import torch
from PIL import Image
from visionmesh.api.common.v1 import artifact_pb2, image_pb2
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.inference.v1 import inference_pb2, inference_pb2_grpc
from visionmesh.common.auth import (
    Principal,
    ServiceTokenSigner,
    bind_principal,
    generate_signing_key,
    public_key_pem,
)
from visionmesh.common.classifiers import (
    CHECKPOINT_FORMAT,
    build_torchvision_classifier,
    load_classifier,
)
from visionmesh.common.embedded import SeaweedS3
from visionmesh.common.logging import configure_logging
from visionmesh.common.specs.batch_inference import RESOLVED_EXPORT_SCOPE
from visionmesh.common.specs.export import check_export_spec
from visionmesh.common.storage import ObjectStore
from visionmesh.common.vision import processing
from visionmesh.export.core.capabilities import export_capabilities
from visionmesh.export.core.images import synthetic_images
from visionmesh.export.core.pipeline import ExportPackage, ExportTarget, run_export
from visionmesh.export.worker.handler import ExportHandler
from visionmesh.inference.app import InferenceService
from visionmesh.inference.config import InferenceSettings
from visionmesh.inference.core.batcher import DynamicBatcher
from visionmesh.inference.core.model import LoadedModel
from visionmesh.inference.core.onnx_runtime import OnnxRuntimeModel
from visionmesh.inference.core.predictor import ImageInput, Predictor

os.environ.setdefault("YOLO_OFFLINE", "1")

TENANT = "bench"
# The gateway hands exports over in full only with this scope; clients are plain users.
GATEWAY = Principal(
    subject="gateway",
    tenant_id=TENANT,
    role="member",
    kind="user",
    scopes=(RESOLVED_EXPORT_SCOPE,),
)
USER = Principal(subject="bench-user", tenant_id=TENANT, role="member", kind="user")
S3_KEYS = ("visionmesh-bench", "visionmesh-bench-secret")
MAX_BATCH = 8
QUEUE_DELAY_MS = 2.0
IMAGE_COUNT = 8
IMAGE_SIZE = (640, 480)  # width, height: a 4:3 photo


# --- measuring ---------------------------------------------------------------------------


@dataclass
class Figure:
    """One measured path: completed calls over wall time, and each call's latency."""

    path: str
    concurrency: int
    calls: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    @property
    def throughput(self) -> float:
        return self.calls / self.seconds

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


Round = tuple[int, float, list[float]]
"""(calls completed, wall seconds, latencies in ms) of one measured stretch."""


async def drive(
    call: Callable[[int], Awaitable[object]], *, concurrency: int, seconds: float, warmup: float
) -> Round:
    """`concurrency` coroutines calling back to back: a warm-up, then `seconds` measured."""

    async def worker(index: int, deadline: float, latencies: list[float] | None) -> int:
        done = 0
        while True:
            start = time.perf_counter()
            await call(index + done * concurrency)
            if latencies is not None:
                latencies.append((time.perf_counter() - start) * 1000)
            done += 1
            if time.perf_counter() >= deadline:
                return done

    if warmup > 0:
        warm_until = time.perf_counter() + warmup
        await asyncio.gather(*(worker(i, warm_until, None) for i in range(concurrency)))
    latencies: list[float] = []
    start = time.perf_counter()
    counts = await asyncio.gather(
        *(worker(i, start + seconds, latencies) for i in range(concurrency))
    )
    return sum(counts), time.perf_counter() - start, latencies


async def drive_threads(
    calls: list[Callable[[int], object]], *, concurrency: int, seconds: float, warmup: float
) -> Round:
    """As `drive`, for blocking calls: one thread per caller, caller i running `calls[i]`."""

    def worker(index: int, deadline: float, latencies: list[float] | None) -> int:
        call, done = calls[index], 0
        while True:
            start = time.perf_counter()
            call(index + done * concurrency)
            if latencies is not None:
                latencies.append((time.perf_counter() - start) * 1000)
            done += 1
            if time.perf_counter() >= deadline:
                return done

    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        if warmup > 0:
            warm_until = time.perf_counter() + warmup
            await asyncio.gather(
                *(
                    loop.run_in_executor(pool, worker, i, warm_until, None)
                    for i in range(concurrency)
                )
            )
        latencies: list[float] = []
        start = time.perf_counter()
        counts = await asyncio.gather(
            *(
                loop.run_in_executor(pool, worker, i, start + seconds, latencies)
                for i in range(concurrency)
            )
        )
    return sum(counts), time.perf_counter() - start, latencies


@dataclass
class Measured:
    """A path to measure: its figure, and how to run one stretch of it (seconds, warm-up)."""

    figure: Figure
    run: Callable[[float, float], Awaitable[Round]]


def on_loop(path: str, call: Callable[[int], Awaitable[object]], concurrency: int) -> Measured:
    return Measured(
        Figure(path, concurrency),
        lambda seconds, warmup: drive(
            call, concurrency=concurrency, seconds=seconds, warmup=warmup
        ),
    )


def on_threads(path: str, calls: list[Callable[[int], object]], concurrency: int) -> Measured:
    return Measured(
        Figure(path, concurrency),
        lambda seconds, warmup: drive_threads(
            calls, concurrency=concurrency, seconds=seconds, warmup=warmup
        ),
    )


async def interleaved(
    measured: list[Measured], *, seconds: float, warmup: float, rounds: int
) -> list[Figure]:
    """Each path for `seconds` in all, in `rounds` alternating stretches (warm-up in the
    first), so that a burst of load from elsewhere on the machine hits the compared paths
    alike rather than one of them."""
    for number in range(rounds):
        for item in measured:
            calls, elapsed, latencies = await item.run(
                seconds / rounds, warmup if not number else 0
            )
            item.figure.calls += calls
            item.figure.seconds += elapsed
            item.figure.latencies_ms.extend(latencies)
    return [item.figure for item in measured]


# --- models, exports, images --------------------------------------------------------------


@dataclass(frozen=True)
class Bench:
    """One model: its checkpoint, its export package and what it was published as."""

    name: str
    imgsz: int
    framework: str
    task: str
    checkpoint: Path
    package: ExportPackage
    export_seconds: float


def _checkpoint(model: str, imgsz: int, path: Path) -> tuple[str, str]:
    if model == "resnet18":
        net = build_torchvision_classifier("resnet18", num_classes=10, imgsz=imgsz)
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "model_state": net.state_dict(),
                "arch": "resnet18",
                "class_names": [f"class{i}" for i in range(10)],
                "imgsz": imgsz,
            },
            path,
        )
        return "torchvision", "classify"
    from ultralytics import YOLO

    YOLO(f"{model}.yaml").save(str(path))
    return "ultralytics", "detect"


def export_model(model: str, tmp: Path) -> Bench:
    """The model's checkpoint exported as an export job would: ONNX, dynamic batch up to 8."""
    imgsz = 224 if model == "resnet18" else 640
    checkpoint = tmp / f"{model}.pt"
    framework, task = _checkpoint(model, imgsz, checkpoint)
    spec = check_export_spec(
        export_pb2.ExportSpec(dynamic_batch=True, max_batch_size=MAX_BATCH),
        framework=framework,
        task=task,
        model_imgsz=imgsz,
        capabilities=export_capabilities(),
    )
    target = ExportTarget(
        spec=spec,
        model_version_id=f"mv-{model}",
        model_name=model,
        model_version=1,
        framework=framework,
        task=task,
        architecture="",
        class_names=(),
        imgsz=imgsz,
    )
    start = time.perf_counter()
    package = run_export(
        target,
        checkpoint,
        tmp / f"{model}-export",
        synthetic_images(8),
        on_phase=lambda _: None,
        should_stop=lambda: False,
    )
    return Bench(model, imgsz, framework, task, checkpoint, package, time.perf_counter() - start)


async def publish(
    store: ObjectStore, package: ExportPackage, job_id: str
) -> export_pb2.ExportResult:
    """Uploads the package under the job's prefix; the ExportResult the export worker would
    announce for it, built by the worker's own code."""
    prefix = f"jobs/{job_id}/"
    uploaded: dict[str, artifact_pb2.ArtifactRef] = {}
    for path in package.files():
        name = path.relative_to(package.root).as_posix()
        data = await asyncio.to_thread(path.read_bytes)
        ref = artifact_pb2.ArtifactRef(
            job_id=job_id,
            name=name,
            key=prefix + name,
            size_bytes=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        await store.put_bytes(ref.key, data)
        uploaded[name] = ref
    return ExportHandler._result(package, prefix, uploaded)


def photos(count: int) -> list[bytes]:
    """JPEGs of IMAGE_SIZE with smooth backgrounds and filled shapes, quality 90."""
    rng = np.random.default_rng(0)
    width, height = IMAGE_SIZE
    ys, xs = np.mgrid[0:height, 0:width]
    encoded = []
    for _ in range(count):
        base = rng.integers(0, 256, 3)
        slope = rng.uniform(-0.2, 0.2, (2, 3))
        image = base + xs[..., None] * slope[0] + ys[..., None] * slope[1]
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(3, 8))):
            color = tuple(int(c) for c in rng.integers(0, 256, 3))
            x1, y1 = int(rng.integers(0, width - 64)), int(rng.integers(0, height - 64))
            x2, y2 = int(rng.integers(x1 + 32, width)), int(rng.integers(y1 + 32, height))
            if rng.random() < 0.5:
                cv2.rectangle(image, (x1, y1), (x2, y2), color, thickness=-1)
            else:
                centre = ((x1 + x2) // 2, (y1 + y2) // 2)
                cv2.circle(image, centre, min(x2 - x1, y2 - y1) // 2, color, -1)
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


# --- the service ---------------------------------------------------------------------------


def service_settings(
    data_dir: Path, database_url: str, s3: SeaweedS3, key_file: Path, *, threads: int, batch: int
) -> InferenceSettings:
    return InferenceSettings(
        data_dir=data_dir,
        database_url=database_url,
        grpc_port=0,
        kserve_grpc_port=0,
        kserve_http_port=0,
        metrics_port=0,
        s3_endpoint=s3.endpoint,
        s3_access_key=S3_KEYS[0],
        s3_secret_key=S3_KEYS[1],
        s3_bucket="bench",
        service_token_public_key_file=key_file,
        reconcile_seconds=1.0,
        max_batch_size=batch,
        batch_queue_delay_ms=QUEUE_DELAY_MS,
        onnx_threads=threads,
        # Only `serve` connects to NATS (batch jobs); the benchmark runs the rest.
        nats_url="nats://127.0.0.1:1",
    )


@contextlib.asynccontextmanager
async def running(settings: InferenceSettings) -> AsyncIterator[InferenceService]:
    """A replica as `serve` runs it, less batch jobs: KServe ports, reconcile loop, gRPC."""
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


async def deploy(
    service: InferenceService,
    name: str,
    export: export_pb2.ExportResult,
    job_id: str,
    *,
    replace: bool = False,
) -> None:
    request = inference_pb2.LoadModelRequest(
        name=name, export=export, resolved_export_job_id=job_id, replace=replace
    )
    with bind_principal(GATEWAY):
        await service.core.load_model(request)


async def until_ready(
    service: InferenceService, name: str, *, within_s: float = 300
) -> LoadedModel:
    deadline = time.monotonic() + within_s
    while True:
        with bind_principal(USER):
            deployment = await service.core.get_deployment(name)
        if deployment.state == inference_pb2.DEPLOYMENT_STATE_FAILED:
            raise RuntimeError(f"{name} failed to load: {deployment.failure_reason}")
        if service.core.model_ready(USER, name):
            return service.core.model(USER, name)
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not READY after {within_s:.0f} s")
        await asyncio.sleep(0.1)


def onnx_model(model: LoadedModel) -> OnnxRuntimeModel:
    runtime = model.runtime
    inner = runtime.runtime if isinstance(runtime, DynamicBatcher) else runtime
    if not isinstance(inner, OnnxRuntimeModel):
        raise TypeError(f"{model.name} is not served by ONNX Runtime: {type(inner).__name__}")
    return inner


# --- the paths -----------------------------------------------------------------------------


@dataclass
class Paths:
    """Everything measured for one model, each a callable taking an image index."""

    bench: Bench
    service: InferenceService
    images: list[bytes]
    token: str
    threads: int
    seconds: float
    warmup: float
    rounds: int
    figures: list[Figure] = field(default_factory=list)

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]

    def image(self, index: int) -> bytes:
        return self.images[index % len(self.images)]

    async def compare(self, *measured: Measured) -> list[Figure]:
        figures = await interleaved(
            list(measured), seconds=self.seconds, warmup=self.warmup, rounds=self.rounds
        )
        self.figures.extend(figures)
        return figures

    # 1. and 2.: images in, results out

    async def in_process(self, index: int) -> inference_pb2.PredictResponse:
        async with self.service.manager.acquire(TENANT, self.bench.name) as model:
            return await self.service.core.predictor(model).predict(
                [ImageInput(field="images[0]", data=self.image(index))],
                inference_pb2.PredictOptions(),
            )

    def grpc_predict(
        self, stub: inference_pb2_grpc.InferenceServiceStub, deployment: str = ""
    ) -> Callable[[int], Awaitable[inference_pb2.PredictResponse]]:
        async def call(index: int) -> inference_pb2.PredictResponse:
            request = inference_pb2.PredictRequest(
                deployment=deployment or self.bench.name,
                images=[image_pb2.Image(data=self.image(index))],
            )
            response: inference_pb2.PredictResponse = await stub.Predict(
                request, metadata=self.metadata
            )
            return response

        return call

    def baseline(self) -> Callable[[], Callable[[int], object]]:
        """What a user would run instead on the same images and device."""
        device = "cuda" if torch.cuda.is_available() else "cpu"
        if self.bench.framework == "ultralytics":
            from ultralytics import YOLO

            def make_yolo() -> Callable[[int], object]:
                model = YOLO(str(self.bench.checkpoint))

                def call(index: int) -> object:
                    data = np.frombuffer(self.image(index), np.uint8)
                    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
                    return model.predict(image, verbose=False, device=device)

                return call

            return make_yolo

        from torchvision import transforms

        stored = load_classifier(self.bench.checkpoint)
        net = stored.model.to(device)
        transform = transforms.Compose(
            [
                transforms.Resize((stored.imgsz, stored.imgsz), antialias=True),
                transforms.ToTensor(),
                transforms.Normalize(stored.mean, stored.std),
            ]
        )

        def make_eager() -> Callable[[int], object]:
            def call(index: int) -> object:
                with Image.open(io.BytesIO(self.image(index))) as opened:
                    tensor = transform(opened.convert("RGB")).unsqueeze(0).to(device)
                with torch.inference_mode():
                    scores = net(tensor).softmax(dim=1)
                    return scores.topk(5, dim=1)[1].tolist()

            return call

        return make_eager

    # 3.: a tensor in, tensors out

    def tensor(self, model: LoadedModel) -> np.ndarray:
        decoded = processing.decode_image(self.image(0))
        batch, _ = processing.preprocess([decoded], model.metadata)
        return np.ascontiguousarray(batch, dtype=np.float32)

    def raw_onnxruntime(self, model: LoadedModel, tensor: np.ndarray) -> Callable[[int], object]:
        served = onnx_model(model)
        options = onnxruntime.SessionOptions()
        if self.threads > 0:
            options.intra_op_num_threads = self.threads
        session = onnxruntime.InferenceSession(
            str(self.bench.package.path("model.onnx")), options, providers=list(served.providers)
        )
        feed = {session.get_inputs()[0].name: tensor}
        return lambda _: session.run(None, feed)


def kserve_grpc_call(
    client: Any, name: str, input_name: str, tensor: np.ndarray, headers: dict[str, str]
) -> Callable[[int], Awaitable[object]]:
    import tritonclient.grpc.aio as grpcclient

    async def call(_: int) -> object:
        given = grpcclient.InferInput(input_name, list(tensor.shape), "FP32")
        given.set_data_from_numpy(tensor)
        return await client.infer(name, [given], headers=dict(headers))

    return call


def kserve_http_call(
    client: Any,
    name: str,
    input_name: str,
    output_names: list[str],
    tensor: np.ndarray,
    headers: dict[str, str],
) -> Callable[[int], Awaitable[object]]:
    import tritonclient.http.aio as httpclient

    async def call(_: int) -> object:
        given = httpclient.InferInput(input_name, list(tensor.shape), "FP32")
        given.set_data_from_numpy(tensor, binary_data=True)
        wanted = [httpclient.InferRequestedOutput(n, binary_data=True) for n in output_names]
        # tritonclient's HTTP client writes its own header into the dict it is given.
        return await client.infer(name, [given], outputs=wanted, headers=dict(headers))

    return call


@contextlib.asynccontextmanager
async def own_predictor(
    paths: Paths, model: LoadedModel, max_batch_size: int
) -> AsyncIterator[tuple[Predictor, DynamicBatcher]]:
    """The deployment's export in a Predictor over a DynamicBatcher of its own."""
    runtime = await OnnxRuntimeModel.load(
        paths.bench.package.path("model.onnx"), threads=paths.threads, max_batch_size=MAX_BATCH
    )
    batcher = DynamicBatcher(
        runtime, max_batch_size=max_batch_size, queue_delay_s=QUEUE_DELAY_MS / 1000
    )
    try:
        yield (
            Predictor(
                model.metadata,
                batcher,
                max_image_bytes=paths.service.settings.max_image_bytes,
                max_image_pixels=paths.service.settings.max_image_pixels,
            ),
            batcher,
        )
    finally:
        await batcher.close()


def predictor_call(paths: Paths, predictor: Predictor) -> Callable[[int], Awaitable[object]]:
    options = inference_pb2.PredictOptions()

    async def call(index: int) -> object:
        image = ImageInput(field="images[0]", data=paths.image(index))
        return await predictor.predict([image], options)

    return call


# --- reporting -----------------------------------------------------------------------------


def print_figures(figures: list[Figure]) -> None:
    print(f"    {'path':<44} {'conc':>4} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'calls':>6}")
    for f in figures:
        print(
            f"    {f.path:<44} {f.concurrency:>4} {f.throughput:>8.1f} "
            f"{f.percentile(0.5):>8.1f} {f.percentile(0.99):>8.1f} {f.calls:>6}"
        )


def ratio_line(label: str, num: Figure, den: Figure, goal: str = "") -> str:
    value = num.throughput / den.throughput
    suffix = f"  (goal {goal})" if goal else ""
    return f"    {label:<66} {value:5.2f}{suffix}"


# --- the run -------------------------------------------------------------------------------


async def bench_model(
    bench: Bench,
    service: InferenceService,
    unbatched: InferenceService,
    signer: ServiceTokenSigner,
    args: argparse.Namespace,
    images: list[bytes],
) -> None:
    import tritonclient.grpc.aio as grpcclient
    import tritonclient.http.aio as httpclient

    token = signer.sign(audience="inference", principal=USER, ttl_seconds=3600)
    paths = Paths(
        bench,
        service,
        images,
        token,
        args.threads,
        args.seconds,
        warmup=args.warmup,
        rounds=args.rounds,
    )
    model = service.core.model(USER, bench.name)
    served = onnx_model(model)
    print(
        f"\n{bench.name} @ {bench.imgsz} ({bench.framework} {bench.task}); exported in "
        f"{bench.export_seconds:.1f} s; served on {served.device} {list(served.providers)}, "
        f"max batch {model.runtime.max_batch_size}"
    )
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    ratios: list[str] = []
    async with contextlib.AsyncExitStack() as stack:
        channel = await stack.enter_async_context(grpc.aio.insecure_channel(service.grpc.address))
        served_call = paths.grpc_predict(inference_pb2_grpc.InferenceServiceStub(channel))
        sample = await served_call(0)
        found = len(sample.results[0].detections) or len(sample.results[0].classifications)
        print(f"    image 0: served Predict returns {found} {sample.task} results")

        # 1. and 2.: the served path against the same pipeline in-process, and against what
        # a user would run otherwise.
        baseline_label = (
            "Ultralytics YOLO(pt).predict"
            if bench.framework == "ultralytics"
            else "torch eager + torchvision transforms"
        )
        make_baseline = paths.baseline()
        baselines = [make_baseline() for _ in range(max(concurrencies))]
        for c in concurrencies:
            local, remote, base = await paths.compare(
                on_loop("in-process predictor", paths.in_process, c),
                on_loop("gRPC Predict (served)", served_call, c),
                on_threads(baseline_label, baselines, c),
            )
            ratios.append(
                ratio_line(f"1. gRPC Predict / in-process, c={c}", remote, local, ">= 0.9")
            )
            ratios.append(
                ratio_line(f"2. gRPC Predict / {baseline_label}, c={c}", remote, base, ">= 1.3")
            )
        del baselines

        # 3. KServe with a preprocessed tensor against ONNX Runtime alone.
        tensor = paths.tensor(model)
        headers = {"authorization": f"Bearer {token}"}
        input_name = served.inputs[0].name
        output_names = [spec.name for spec in served.outputs]
        grpc_client = grpcclient.InferenceServerClient(service.kserve_grpc.address)
        stack.push_async_callback(grpc_client.close)
        assert service.kserve_http is not None
        http_client = httpclient.InferenceServerClient(f"127.0.0.1:{service.kserve_http.port}")
        stack.push_async_callback(http_client.close)
        raw, kserve_grpc, kserve_http = await paths.compare(
            on_threads("onnxruntime session.run (raw)", [paths.raw_onnxruntime(model, tensor)], 1),
            on_loop(
                "KServe gRPC infer (tritonclient)",
                kserve_grpc_call(grpc_client, bench.name, input_name, tensor, headers),
                1,
            ),
            on_loop(
                "KServe HTTP infer (tritonclient, binary)",
                kserve_http_call(
                    http_client, bench.name, input_name, output_names, tensor, headers
                ),
                1,
            ),
        )
        ratios.append(
            ratio_line(
                "3. KServe gRPC infer / raw onnxruntime, batch 1", kserve_grpc, raw, ">= 0.9"
            )
        )
        ratios.append(
            ratio_line(
                "3. KServe HTTP infer / raw onnxruntime, batch 1", kserve_http, raw, ">= 0.9"
            )
        )

        # 4. Dynamic batching with 8 callers: in-process through Predictors over batchers of
        # their own, and over gRPC against a replica configured with max_batch_size 1.
        c8 = args.batch_concurrency
        batched_predictor, batcher = await stack.enter_async_context(
            own_predictor(paths, model, MAX_BATCH)
        )
        single_predictor, _ = await stack.enter_async_context(own_predictor(paths, model, 1))
        other = await stack.enter_async_context(grpc.aio.insecure_channel(unbatched.grpc.address))
        unbatched_call = paths.grpc_predict(inference_pb2_grpc.InferenceServiceStub(other))
        batched, single, served_batched, served_single = await paths.compare(
            on_loop(
                f"in-process, max batch {MAX_BATCH}", predictor_call(paths, batched_predictor), c8
            ),
            on_loop("in-process, max batch 1", predictor_call(paths, single_predictor), c8),
            on_loop(f"gRPC Predict, max batch {MAX_BATCH}", served_call, c8),
            on_loop("gRPC Predict, max batch 1 (2nd replica)", unbatched_call, c8),
        )
        stats = batcher.stats
        mean_batch = stats.inference_count / max(1, stats.execution_count)
        ratios.append(
            ratio_line(
                f"4. in-process batched / unbatched, c={c8} (mean batch {mean_batch:.1f})",
                batched,
                single,
            )
        )
        ratios.append(
            ratio_line(
                f"4. gRPC Predict batched / unbatched, c={c8}", served_batched, served_single
            )
        )

    print("  5. throughput and latency per path")
    print_figures(paths.figures)
    print("  ratios of throughput (same run)")
    for line in ratios:
        print(line)


async def swap_under_load(
    service: InferenceService,
    signer: ServiceTokenSigner,
    store: ObjectStore,
    benches: list[Bench],
    images: list[bytes],
    seconds: float,
) -> None:
    """6. Clients hammer Predict while the deployment is replaced by another export."""
    first = benches[-1]
    second = benches[0]
    if first is second:
        print(f"\n6. swap under load: {first.name} replaced by a re-publication of itself")
    else:
        print(f"\n6. swap under load: {first.name} replaced by {second.name}")
    await deploy(service, "live", await publish(store, first.package, "live-a"), "live-a")
    old = await until_ready(service, "live")
    token = signer.sign(audience="inference", principal=USER, ttl_seconds=3600)
    metadata = (("authorization", f"Bearer {token}"),)
    failures: list[str] = []
    answered: list[tuple[float, str]] = []
    stop = asyncio.Event()
    clients = 4
    async with grpc.aio.insecure_channel(service.grpc.address) as channel:
        stub = inference_pb2_grpc.InferenceServiceStub(channel)

        async def client(index: int) -> None:
            while not stop.is_set():
                request = inference_pb2.PredictRequest(
                    deployment="live",
                    images=[image_pb2.Image(data=images[index % len(images)])],
                )
                try:
                    answer = await stub.Predict(request, metadata=metadata)
                    answered.append((time.perf_counter(), answer.task))
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")
                index += clients

        tasks = [asyncio.create_task(client(i)) for i in range(clients)]
        await asyncio.sleep(min(2.0, seconds))
        second_export = await publish(store, second.package, "live-b")
        swap_started = time.perf_counter()
        await deploy(service, "live", second_export, "live-b", replace=True)
        deadline = time.monotonic() + 300
        while service.core.model(USER, "live").version == old.version:
            if time.monotonic() > deadline:
                raise TimeoutError("the replacement never served")
            await asyncio.sleep(0.02)
        swap_ended = time.perf_counter()
        await asyncio.sleep(min(2.0, seconds))
        stop.set()
        await asyncio.gather(*tasks)
    during = sum(1 for at, _ in answered if swap_started <= at <= swap_ended)
    tasks_seen = sorted({task for _, task in answered})
    print(
        f"    {clients} gRPC clients; swap took {swap_ended - swap_started:.2f} s "
        f"(replace=True until the new generation served)"
    )
    print(
        f"    requests: {len(answered) + len(failures)} in all, {during} served during the swap, "
        f"tasks answered {tasks_seen}"
    )
    print(f"    failed requests: {len(failures)}  (goal 0)")
    for failure in failures[:5]:
        print(f"      {failure}")


async def run(args: argparse.Namespace) -> None:
    models = args.models.split(",")
    # The service logs every load; the figures are what this prints.
    configure_logging(service="benchmark", level="WARNING", stream=sys.stderr)
    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__} "
        f"{onnxruntime.get_available_providers()}, {os.cpu_count()} CPUs; "
        f"{args.seconds:.0f} s per figure after {args.warmup:.1f} s warm-up; "
        f"images {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} JPEG"
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="vm-bench-inference-") as tmp_dir:
        tmp = Path(tmp_dir)
        benches = [await asyncio.to_thread(export_model, model, tmp) for model in models]
        images = photos(IMAGE_COUNT)
        signer = ServiceTokenSigner(private_key=generate_signing_key())
        key_file = tmp / "gateway.pub"
        key_file.write_bytes(public_key_pem(signer.public_key))
        database_url = f"sqlite:///{tmp / 'inference.db'}"
        async with contextlib.AsyncExitStack() as stack:
            s3 = await stack.enter_async_context(
                SeaweedS3(
                    data_dir=tmp / "s3" / "data",
                    log_dir=tmp / "s3",
                    access_key=S3_KEYS[0],
                    secret_key=S3_KEYS[1],
                )
            )
            settings = service_settings(
                tmp / "replica", database_url, s3, key_file, threads=args.threads, batch=MAX_BATCH
            )
            service = await stack.enter_async_context(running(settings))
            store = service.objects
            for bench in benches:
                job_id = f"export-{bench.name}"
                await deploy(
                    service, bench.name, await publish(store, bench.package, job_id), job_id
                )
            for bench in benches:
                await until_ready(service, bench.name)
            # A second replica on the same table, with dynamic batching off, for figure 4.
            unbatched_settings = service_settings(
                tmp / "replica-unbatched", database_url, s3, key_file, threads=args.threads, batch=1
            )
            async with running(unbatched_settings) as unbatched:
                for bench in benches:
                    await until_ready(unbatched, bench.name)
                for bench in benches:
                    await bench_model(bench, service, unbatched, signer, args, images)
            await swap_under_load(service, signer, store, benches, images, args.seconds)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per figure")
    parser.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per figure")
    parser.add_argument(
        "--rounds", type=int, default=3, help="alternating stretches the seconds are split into"
    )
    parser.add_argument("--models", default="yolo11n,resnet18")
    parser.add_argument("--concurrency", default="1,4", help="callers for figures 1 and 2")
    parser.add_argument("--batch-concurrency", type=int, default=8, help="callers for figure 4")
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime / torch threads (0 = default)"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
