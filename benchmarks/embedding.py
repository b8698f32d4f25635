"""Embedding benchmark: product matching accuracy with a backbone trained on the catalogue,
and the served Embed path against the same model's forward in-process.

One real EmbeddingService runs in this process (SQLite file, Qdrant Edge, an embedded
SeaweedFS S3, gRPC with minted service tokens for audience "embedding"). From one run it
prints:
  1. top-1 product accuracy on a held-out synthetic catalogue (`make_catalog_dataset`:
     --products products, each a distinct shape x colour x texture, with --renders reference
     renders that differ in scale, rotation, background and position). The queries
     (`render_catalog_queries`, --queries-per-product each) are fresh renders of the same
     products, half of them cropped around the object as a detector would. The references
     are upserted with their product id into a collection of the backbone, and every query
     goes through the service core's own Match (nearest points, a product counted once at
     its best point, top 1) for:
       - a torchvision --arch classifier trained on the catalogue's products (one class per
         product: the reference renders plus --train-extra fresh renders each, half of them
         cropped; validation on other fresh renders; never the queries; the augmentation
         of --augment: flips, any rotation, crops, shifts, brightness and saturation; with no
         pretrained weights on this machine, renders and augmentation are what it learns
         from), through the mesh:
         a dataset uploaded over the gateway's REST, a training job run by the training
         worker (real processes: gateway, NATS, S3, worker), its best.pt downloaded. With
         --train in-process the training service's own `train_classifier` runs here instead;
       - the same architecture at random init, as the baseline.
     Both are embedded as `mv-` backbones (pooled penultimate features, L2-normalised),
     handed over as the gateway does (a ResolvedBackbone to a checkpoint in the service's
     bucket). Goal: trained >= 0.9, far above random init.
  2. served Embed over gRPC (grpc.aio client, --batch JPEG images per request, a service
     token) against `embedder.embed` on the same decoded images, in-process, with the very
     embedder object the service serves: throughput ratio (goal >= 0.9). The model is a
     random-init DINOv2 saved with save_pretrained and loaded by the service from its models
     directory (no weights download here): ViT-S/14 sized by default (--dinov2 small), or the
     tests' tiny config (--dinov2 tiny). Each path runs --seconds in all, in --rounds
     alternating stretches after a warm-up call, so load from elsewhere hits both alike;
     throughput = images embedded / wall time. The client shares the service's event loop.
The vector store figures (Edge against qdrant-client local mode at 100k points, recall@10,
filtered search latency) are benchmarks/vector_store.py's; cross-tenant isolation is
tests/embedding/test_vector_store.py's 1,000 filtered queries.

    uv run python benchmarks/embedding.py [--products 24] [--renders 8] [--imgsz 64]
        [--queries-per-product 4] [--train-extra 40] [--arch resnet18] [--epochs 30]
        [--lr0 0.003] [--augment JSON] [--train mesh|in-process] [--dinov2 small|tiny]
        [--batch 32] [--seconds 20] [--rounds 3] [--device cpu] [--threads 0]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import torch
from PIL import Image
from visionmesh.api.common.v1 import artifact_pb2, image_pb2
from visionmesh.api.embedding.v1 import embedding_pb2, embedding_pb2_grpc
from visionmesh.cli.synth import (
    CatalogQuery,
    SynthCatalog,
    make_catalog_dataset,
    render_catalog_queries,
    zip_dataset,
)
from visionmesh.common.auth import (
    Principal,
    ServiceTokenSigner,
    bind_principal,
    generate_signing_key,
    public_key_pem,
)
from visionmesh.common.classifiers import CHECKPOINT_FORMAT, build_torchvision_classifier
from visionmesh.common.embedded import SeaweedS3
from visionmesh.common.logging import configure_logging
from visionmesh.common.specs.embedding import RESOLVED_BACKBONE_SCOPE
from visionmesh.embedding.app import EmbeddingService
from visionmesh.embedding.config import EmbeddingSettings
from visionmesh.stack import Ports, Stack

os.environ.setdefault("YOLO_OFFLINE", "1")

TENANT = "bench"
USER = Principal(subject="bench-user", tenant_id=TENANT, role="member", kind="user")
# Only the gateway hands a backbone checkpoint over (after resolving the model version).
GATEWAY = Principal(
    subject="gateway",
    tenant_id=TENANT,
    role="member",
    kind="user",
    scopes=(RESOLVED_BACKBONE_SCOPE,),
)
S3_KEYS = ("visionmesh-bench", "visionmesh-bench-secret")
DINOV2 = "dinov2_bench"
UPSERT_BATCH = 32
# The renders are rotated at random: flips in both directions and any rotation are
# label-preserving. Crops and shifts stand in for a detector's cut-outs; brightness and
# saturation for lighting. Hue stays: colour is part of what tells products apart.
CATALOGUE_AUGMENT = {
    "fliplr": 0.5,
    "flipud": 0.5,
    "degrees": 180.0,
    "scale": 0.5,
    "translate": 0.1,
    "hsv_v": 0.3,
    "hsv_s": 0.3,
}
PHOTO_SIZE = (640, 480)  # width, height of the Embed images: a 4:3 photo
DINOV2_CONFIGS: dict[str, dict[str, int]] = {
    # ViT-S/14 as in dinov2-small: 384-d, 12 layers, 6 heads.
    "small": {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6},
    # tests/embedding/env.py's config.
    "tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "mlp_ratio": 2},
}


# --- the catalogue and its classifier -------------------------------------------------------


@dataclass(frozen=True)
class Catalogue:
    catalog: SynthCatalog
    queries: list[CatalogQuery]
    classify_root: Path
    """train/<product_id>/ = the reference renders and extra renders; val/<product_id>/ =
    other fresh renders."""


def make_catalogue(tmp: Path, args: argparse.Namespace) -> Catalogue:
    catalog = make_catalog_dataset(
        tmp / "catalog", n_products=args.products, renders=args.renders, imgsz=args.imgsz, seed=0
    )
    queries = render_catalog_queries(
        catalog, tmp / "queries", per_product=args.queries_per_product, seed=1
    )
    # Training and validation images come from other query seeds than the held-out
    # queries, which never influence training: extra renders of the catalogue's products,
    # half cropped around the object (the references alone show no close-ups), and
    # validation renders to pick best.pt.
    extra = render_catalog_queries(catalog, tmp / "extra", per_product=args.train_extra, seed=3)
    val = render_catalog_queries(catalog, tmp / "val", per_product=2, seed=2)
    root = tmp / "classify"
    for product in catalog.products:
        folder = root / "train" / product.id
        folder.mkdir(parents=True)
        for image in product.images:
            shutil.copy(catalog.root / image, folder / f"ref-{Path(image).name}")
    for split, renders in (("train", extra), ("val", val)):
        for query in renders:
            folder = root / split / query.product_id
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(query.path, folder / f"render-{query.path.name}")
    return Catalogue(catalog, queries, root)


def train_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The training job's spec, in the REST API's JSON spelling."""
    return {
        "framework": "torchvision",
        "task": "classify",
        "model": args.arch,
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": 16,
        "seed": 0,
        "lr0": args.lr0,
        "optimizer": "AdamW",
        "augment": json.loads(args.augment),
        "dataLoading": {"preload": True, "numWorkers": 0},
        "device": args.device,
    }


@dataclass(frozen=True)
class Trained:
    checkpoint: Path
    model_version_id: str
    imgsz: int
    how: str
    seconds: float
    val_top1: float


async def train_through_mesh(tmp: Path, data: Catalogue, args: argparse.Namespace) -> Trained:
    """REST: dataset create -> PUT archive -> finalize -> training job -> best.pt download."""
    archive = zip_dataset(data.classify_root, tmp / "classify.zip")
    stack = Stack(
        data_dir=tmp / "stack",
        ports=Ports.free(),
        workers=("training",),
        extra_env={"VISIONMESH_DEVICE": args.device},
    )
    await stack.start()
    try:
        rest = f"http://127.0.0.1:{stack.ports.gateway_rest}"
        async with httpx.AsyncClient(base_url=rest, timeout=600) as client:
            credentials = {"username": "bench", "password": "bench-pass-1"}
            (await client.post("/v1/auth/signup", json=credentials)).raise_for_status()
            login = await client.post("/v1/auth/login", json=credentials)
            client.headers["authorization"] = f"Bearer {login.json()['accessToken']}"
            created = (await client.post("/v1/datasets", json={"name": "catalogue"})).json()
            async with httpx.AsyncClient(timeout=600) as s3:
                content = await asyncio.to_thread(archive.read_bytes)
                (await s3.put(created["uploadUrl"], content=content)).raise_for_status()
            dataset_id = created["dataset"]["id"]
            finalized = await client.post(f"/v1/datasets/{dataset_id}:finalize", json={})
            if finalized.status_code != 200:
                raise RuntimeError(f"dataset finalize: {finalized.text}")
            start = time.perf_counter()
            response = await client.post(
                "/v1/training/jobs",
                json={"datasetId": dataset_id, "spec": train_spec(args), "modelName": "catalogue"},
            )
            if response.status_code != 200:
                raise RuntimeError(f"training job refused: {response.text}")
            job_id = response.json()["job"]["id"]
            async with client.stream("GET", f"/v1/jobs/{job_id}/events") as stream:
                async for _line in stream.aiter_lines():
                    pass
            seconds = time.perf_counter() - start
            job = (await client.get(f"/v1/jobs/{job_id}")).json()["job"]
            if job["state"] != "JOB_STATE_SUCCEEDED":
                raise RuntimeError(f"training job ended {job['state']}: {job.get('error')}")
            version_id = job["modelVersionId"]
            version = (await client.get(f"/v1/model-versions/{version_id}")).json()
            artifacts = (await client.get(f"/v1/jobs/{job_id}/artifacts")).json()["artifacts"]
            best = next(a for a in artifacts if a["name"] == "best.pt")
            url = (await client.get(f"/v1/artifacts/{best['id']}:download")).json()["url"]
            async with httpx.AsyncClient(timeout=600) as s3:
                download = await s3.get(url)
                download.raise_for_status()
        checkpoint = tmp / "trained.pt"
        await asyncio.to_thread(checkpoint.write_bytes, download.content)
        return Trained(
            checkpoint=checkpoint,
            model_version_id=version_id,
            imgsz=int(version["modelVersion"]["imgsz"]),
            how="through the mesh (REST -> gateway -> NATS -> training worker -> S3)",
            seconds=seconds,
            val_top1=float(job["metrics"].get("top1", float("nan"))),
        )
    finally:
        await stack.stop()


def train_in_process(tmp: Path, data: Catalogue, args: argparse.Namespace) -> Trained:
    """The training service's own trainer, called here (no mesh)."""
    from google.protobuf import json_format
    from visionmesh.api.training.v1 import training_pb2
    from visionmesh.common.specs.training import to_train_spec
    from visionmesh.training.core.classifier_trainer import train_classifier

    message = json_format.ParseDict(train_spec(args), training_pb2.TrainingSpec())
    start = time.perf_counter()
    result = train_classifier(
        to_train_spec(message), data_root=data.classify_root, workdir=tmp / "train"
    )
    if result.best_path is None:
        raise RuntimeError("training finished no epoch")
    return Trained(
        checkpoint=result.best_path,
        model_version_id="in-process",
        imgsz=args.imgsz,
        how="in-process (the training service's train_classifier, no mesh)",
        seconds=time.perf_counter() - start,
        val_top1=float(result.metrics.get("top1", float("nan"))),
    )


def random_init_checkpoint(path: Path, arch: str, class_names: Sequence[str], imgsz: int) -> Path:
    """The architecture at random init, saved in the trainer's checkpoint format."""
    torch.manual_seed(0)
    net = build_torchvision_classifier(arch, num_classes=len(class_names), imgsz=imgsz)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_state": net.state_dict(),
            "arch": arch,
            "class_names": list(class_names),
            "imgsz": imgsz,
        },
        path,
    )
    return path


# --- matching through the service core ------------------------------------------------------


async def hand_over_backbone(
    service: EmbeddingService, checkpoint: Path, model_version_id: str, imgsz: int
) -> embedding_pb2.ResolvedBackbone:
    """The checkpoint in the service's bucket and the reference the gateway would send."""
    data = await asyncio.to_thread(checkpoint.read_bytes)
    key = f"jobs/bench-{model_version_id}/best.pt"
    await service.objects.put_bytes(key, data)
    return embedding_pb2.ResolvedBackbone(
        model_version_id=model_version_id,
        checkpoint=artifact_pb2.ArtifactRef(key=key, sha256=hashlib.sha256(data).hexdigest()),
        framework="torchvision",
        imgsz=imgsz,
    )


async def match_accuracy(
    service: EmbeddingService,
    collection: str,
    backbone: embedding_pb2.ResolvedBackbone,
    data: Catalogue,
) -> tuple[float, int]:
    """References upserted with their product ids, then each query's top-1 product by the
    core's Match. Returns (top-1 accuracy, embedding dimension)."""
    core = service.core
    with bind_principal(GATEWAY):
        created = await core.create_collection(
            embedding_pb2.CreateCollectionRequest(
                name=collection, model=f"mv-{backbone.model_version_id}", backbone=backbone
            )
        )
    references = [
        (product.id, data.catalog.root / image)
        for product in data.catalog.products
        for image in product.images
    ]
    with bind_principal(USER):
        for lo in range(0, len(references), UPSERT_BATCH):
            chunk = references[lo : lo + UPSERT_BATCH]
            await core.upsert_images(
                embedding_pb2.UpsertImagesRequest(
                    collection=collection,
                    points=[
                        embedding_pb2.ImagePoint(
                            id=f"{product_id}/{path.name}",
                            image=image_pb2.Image(data=path.read_bytes()),
                            product_id=product_id,
                        )
                        for product_id, path in chunk
                    ],
                )
            )
        correct = 0
        for lo in range(0, len(data.queries), UPSERT_BATCH):
            chunk_queries = data.queries[lo : lo + UPSERT_BATCH]
            matched = await core.match(
                embedding_pb2.MatchRequest(
                    collection=collection,
                    images=[image_pb2.Image(data=q.path.read_bytes()) for q in chunk_queries],
                    top_k=1,
                )
            )
            for query, result in zip(chunk_queries, matched.results, strict=True):
                if result.products and result.products[0].product_id == query.product_id:
                    correct += 1
    return correct / len(data.queries), created.dim


# --- served Embed against the forward in-process --------------------------------------------


def save_dinov2(root: Path, size: str) -> None:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    sizes = DINOV2_CONFIGS[size]
    config = Dinov2Config(
        hidden_size=sizes["hidden_size"],
        num_hidden_layers=sizes["num_hidden_layers"],
        num_attention_heads=sizes["num_attention_heads"],
        mlp_ratio=sizes.get("mlp_ratio", 4),
        patch_size=14,
        image_size=224,
    )
    Dinov2Model(config).save_pretrained(root / DINOV2)


def photos(count: int) -> list[bytes]:
    """JPEGs of PHOTO_SIZE: noisy gradients with filled rectangles, quality 90."""
    rng = np.random.default_rng(0)
    width, height = PHOTO_SIZE
    ys, xs = np.mgrid[0:height, 0:width]
    encoded = []
    for _ in range(count):
        slope = rng.uniform(-0.2, 0.2, (2, 3))
        image = rng.integers(0, 256, 3) + xs[..., None] * slope[0] + ys[..., None] * slope[1]
        image = image + rng.normal(0, 8, image.shape)
        for _ in range(int(rng.integers(3, 8))):
            x1, y1 = int(rng.integers(0, width - 64)), int(rng.integers(0, height - 64))
            x2, y2 = int(rng.integers(x1 + 32, width)), int(rng.integers(y1 + 32, height))
            image[y1:y2, x1:x2] = rng.integers(0, 256, 3)
        buffer = io.BytesIO()
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


@dataclass
class Throughput:
    path: str
    images: int = 0
    seconds: float = 0.0
    calls: int = 0

    @property
    def per_second(self) -> float:
        return self.images / self.seconds


async def interleaved(
    paths: list[tuple[Throughput, Callable[[], Awaitable[int]]]], *, seconds: float, rounds: int
) -> None:
    """Each path for `seconds` in all, in `rounds` alternating stretches: a burst of load
    from elsewhere on the machine hits the compared paths alike."""
    for _ in range(rounds):
        for figure, call in paths:
            deadline = time.perf_counter() + seconds / rounds
            start = time.perf_counter()
            while True:
                figure.images += await call()
                figure.calls += 1
                if time.perf_counter() >= deadline:
                    break
            figure.seconds += time.perf_counter() - start


async def served_vs_direct(
    service: EmbeddingService, signer: ServiceTokenSigner, args: argparse.Namespace
) -> tuple[Throughput, Throughput]:
    from visionmesh.common.vision.processing import decode_image

    images = photos(args.batch)
    pixels = [decode_image(data) for data in images]
    embedder = await service.embedders.get(DINOV2, tenant_id=TENANT)
    request = embedding_pb2.EmbedRequest(
        model=DINOV2, images=[image_pb2.Image(data=data) for data in images]
    )
    token = signer.sign(audience="embedding", principal=USER)
    metadata = (("authorization", f"Bearer {token}"),)
    async with grpc.aio.insecure_channel(
        service.grpc.address,
        options=[("grpc.max_send_message_length", 64 * 1024 * 1024)],
    ) as channel:
        stub = embedding_pb2_grpc.EmbeddingServiceStub(channel)

        async def served() -> int:
            response = await stub.Embed(request, metadata=metadata)
            return len(response.embeddings)

        async def direct() -> int:
            vectors = await asyncio.to_thread(embedder.embed, pixels)
            return len(vectors)

        # Warm-up: the service loads the model on first use; the first forwards are slow.
        served_vectors = await stub.Embed(request, metadata=metadata)
        direct_vectors = await asyncio.to_thread(embedder.embed, pixels)
        served_array = np.array([e.vector for e in served_vectors.embeddings], dtype=np.float32)
        difference = float(np.abs(served_array - direct_vectors).max())
        if difference > 1e-4:
            raise RuntimeError(f"served and direct embeddings differ by {difference}")
        figures = (Throughput("served Embed (gRPC)"), Throughput("embedder.embed in-process"))
        await interleaved(
            [(figures[0], served), (figures[1], direct)], seconds=args.seconds, rounds=args.rounds
        )
    return figures


# --- the run ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_service(
    tmp: Path, args: argparse.Namespace
) -> AsyncIterator[tuple[EmbeddingService, ServiceTokenSigner]]:
    signer = ServiceTokenSigner(private_key=generate_signing_key())
    key_file = tmp / "gateway.pub"
    key_file.write_bytes(public_key_pem(signer.public_key))
    save_dinov2(tmp / "models", args.dinov2)
    async with SeaweedS3(
        data_dir=tmp / "s3" / "data",
        log_dir=tmp / "s3",
        access_key=S3_KEYS[0],
        secret_key=S3_KEYS[1],
    ) as s3:
        settings = EmbeddingSettings(
            data_dir=tmp / "service",
            dinov2_dir=tmp / "models",
            grpc_port=0,
            device=args.device,
            embed_batch_size=args.batch,
            s3_endpoint=s3.endpoint,
            s3_access_key=S3_KEYS[0],
            s3_secret_key=S3_KEYS[1],
            s3_bucket="bench",
            service_token_public_key_file=key_file,
            # Only `serve` connects to NATS (embedding jobs); the benchmark runs the rest.
            nats_url="nats://127.0.0.1:1",
        )
        service = EmbeddingService(settings)
        await service.start()
        await service.grpc.start()
        try:
            yield service, signer
        finally:
            await service.grpc.stop(grace=0)
            await service.stop()


def table(rows: list[tuple[str, str]]) -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


async def run(args: argparse.Namespace) -> None:
    configure_logging(service="benchmark", level="WARNING", stream=sys.stderr)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch "
        f"threads, device {args.device}"
    )
    with tempfile.TemporaryDirectory(prefix="vm-bench-embedding-") as tmp_dir:
        tmp = Path(tmp_dir)
        data = make_catalogue(tmp, args)
        if args.train == "mesh":
            trained = await train_through_mesh(tmp, data, args)
        else:
            trained = await asyncio.to_thread(train_in_process, tmp, data, args)
        class_names = [product.id for product in data.catalog.products]
        baseline = random_init_checkpoint(tmp / "random.pt", args.arch, class_names, args.imgsz)
        async with running_service(tmp, args) as (service, signer):
            trained_accuracy, dim = await match_accuracy(
                service,
                "trained",
                await hand_over_backbone(
                    service, trained.checkpoint, trained.model_version_id, trained.imgsz
                ),
                data,
            )
            random_accuracy, _ = await match_accuracy(
                service,
                "random-init",
                await hand_over_backbone(service, baseline, f"random-{uuid.uuid4().hex[:6]}", 0),
                data,
            )
            served, direct = await served_vs_direct(service, signer, args)

    queries = len(data.queries)
    references = data.catalog.image_count
    print(
        f"\n1. Product matching, held-out synthetic catalogue: {args.products} products x "
        f"{args.renders} reference renders ({references} points) at {args.imgsz}px; {queries} "
        f"queries ({args.queries_per_product} per product: fresh renders, half cropped); "
        f"{args.arch} backbone, pooled penultimate features ({dim}-d), EmbeddingCore.match top-1"
    )
    table(
        [
            (
                f"training: {trained.how}",
                f"{args.epochs} epochs in {trained.seconds:.0f} s, "
                f"val top-1 {trained.val_top1:.3f}",
            ),
            ("top-1 accuracy, trained on the catalogue (goal >= 0.9)", f"{trained_accuracy:.3f}"),
            (f"top-1 accuracy, {args.arch} at random init", f"{random_accuracy:.3f}"),
            ("chance", f"{1 / args.products:.3f}"),
        ]
    )
    config = DINOV2_CONFIGS[args.dinov2]
    print(
        f"\n2. Embed, batch {args.batch} JPEGs {PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}, random-init "
        f"DINOv2 ({args.dinov2}: {config['hidden_size']}-d, {config['num_hidden_layers']} "
        f"layers, 224 px), {args.seconds:.0f} s per path in {args.rounds} alternating rounds"
    )
    table(
        [
            *(
                (f"{f.path} images/s", f"{f.per_second:.1f} ({f.calls} calls of {args.batch})")
                for f in (served, direct)
            ),
            (
                "ratio served / in-process (goal >= 0.9)",
                f"{served.per_second / direct.per_second:.3f}",
            ),
        ]
    )
    print(
        "\n3. Vector store (Edge vs qdrant-client local mode at 100k points: upserts/s, filtered "
        "search p50/p99, HNSW recall@10): uv run python benchmarks/vector_store.py"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--products", type=int, default=24)
    parser.add_argument("--renders", type=int, default=8, help="reference renders per product")
    parser.add_argument("--imgsz", type=int, default=64, help="render and training size")
    parser.add_argument("--queries-per-product", type=int, default=4)
    parser.add_argument(
        "--train-extra",
        type=int,
        default=40,
        help="training renders per product besides the references (half cropped): with no "
        "pretrained weights here, the backbone learns from these alone",
    )
    parser.add_argument("--arch", default="resnet18", help="a torchvision classifier")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--lr0", type=float, default=0.003, help="AdamW, cosine schedule")
    parser.add_argument(
        "--augment",
        default=json.dumps(CATALOGUE_AUGMENT),
        help="the training spec's augment map, as JSON",
    )
    parser.add_argument(
        "--train",
        choices=("mesh", "in-process"),
        default="mesh",
        help="train through the running mesh, or with the trainer's code in this process",
    )
    parser.add_argument("--dinov2", choices=sorted(DINOV2_CONFIGS), default="small")
    parser.add_argument("--batch", type=int, default=32, help="images per Embed call")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per path")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    args = parser.parse_args()
    if args.products < 2:
        sys.exit("--products must be at least 2")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
