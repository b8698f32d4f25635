"""Training benchmark: wall time of a YOLO detect job through the mesh vs Ultralytics directly.

Both train the same synthetic dataset with the same arguments and seed, on the same
machine, one after the other:
  direct  `YOLO(<yaml>).train(...)` in a fresh Python process (timed around the call);
  mesh    REST create-job -> gateway -> NATS -> training worker -> S3 -> SUCCEEDED event
          (timed from the POST until the job's SSE stream reports SUCCEEDED).
Prints both wall times, their ratio (goal <= 1.10) and both runs' final metrics (the mesh
must not change what is learned).

    uv run python benchmarks/training.py [--epochs 15] [--n-train 128] [--imgsz 96] [--device cpu]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from _mesh import running_stack
from visionmesh.cli.synth import make_detect_dataset, zip_dataset


def direct(data_yaml: Path, workdir: Path, spec: dict, device: str) -> dict:
    """Ultralytics directly, in a fresh process, with the arguments the reference spells out."""
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).parents[1] / "scripts" / "ultralytics_reference.py"),
            json.dumps({**spec, "device": device}),
            str(data_yaml),
            str(workdir),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "YOLO_CONFIG_DIR": str(workdir / "yolo-config")},
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


async def through_mesh(stack_dir: Path, archive: Path, spec: dict, device: str) -> dict:
    async with running_stack(stack_dir, extra_env={"VISIONMESH_DEVICE": device}) as stack:
        rest = f"http://127.0.0.1:{stack.ports.gateway_rest}"
        async with httpx.AsyncClient(base_url=rest, timeout=600) as client:
            credentials = {"username": "bench", "password": "bench-pass-1"}
            await client.post("/v1/auth/signup", json=credentials)
            token = (await client.post("/v1/auth/login", json=credentials)).json()["accessToken"]
            client.headers["authorization"] = f"Bearer {token}"
            created = (await client.post("/v1/datasets", json={"name": "bench"})).json()
            async with httpx.AsyncClient(timeout=600) as s3:
                content = await asyncio.to_thread(archive.read_bytes)
                put = await s3.put(created["uploadUrl"], content=content)
                put.raise_for_status()
            dataset_id = created["dataset"]["id"]
            (await client.post(f"/v1/datasets/{dataset_id}:finalize", json={})).raise_for_status()
            start = time.perf_counter()
            job = (
                await client.post("/v1/training/jobs", json={"datasetId": dataset_id, "spec": spec})
            ).json()["job"]
            async with client.stream("GET", f"/v1/jobs/{job['id']}/events") as stream:
                async for _line in stream.aiter_lines():
                    pass
            elapsed = time.perf_counter() - start
            final = (await client.get(f"/v1/jobs/{job['id']}")).json()["job"]
    if final["state"] != "JOB_STATE_SUCCEEDED":
        raise RuntimeError(f"mesh job ended {final['state']}: {final.get('error')}")
    return {"seconds": elapsed, "metrics": final["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    # Defaults: a setting where YOLO really learns the synthetic shapes (mAP50 ~0.95).
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--n-train", type=int, default=128)
    parser.add_argument("--n-val", type=int, default=32)
    parser.add_argument("--imgsz", type=int, default=96)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    spec = {
        "framework": "ultralytics",
        "task": "detect",
        "model": "yolo11n.yaml",
        "epochs": args.epochs,
        "imgsz": args.imgsz,
        "batch": args.batch,
        "optimizer": "SGD",
        "lr0": 0.05,
        "seed": 0,
        "device": args.device,
    }
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        make_detect_dataset(
            tmp / "data", n_train=args.n_train, n_val=args.n_val, imgsz=args.imgsz, seed=0
        )
        archive = zip_dataset(tmp / "data", tmp / "data.zip")
        direct_run = direct(tmp / "data" / "data.yaml", tmp / "direct", spec, args.device)
        mesh_run = asyncio.run(through_mesh(tmp / "stack", archive, spec, args.device))
    ratio = mesh_run["seconds"] / direct_run["seconds"]
    print(
        f"YOLO detect, yolo11n.yaml, {args.n_train}+{args.n_val} images at {args.imgsz}px, "
        f"{args.epochs} epochs, batch {args.batch}, device {args.device}:"
    )
    print(f"  Ultralytics directly: {direct_run['seconds']:.1f} s")
    print(f"  through the mesh:     {mesh_run['seconds']:.1f} s (create job -> SUCCEEDED)")
    print(f"  ratio mesh/direct:    {ratio:.3f} (goal <= 1.10)")
    ultralytics_keys = {
        "map50": "metrics/mAP50(B)",
        "map50_95": "metrics/mAP50-95(B)",
        "precision": "metrics/precision(B)",
        "recall": "metrics/recall(B)",
    }
    for name, key in ultralytics_keys.items():
        d = direct_run["metrics"].get(key, float("nan"))
        m = mesh_run["metrics"].get(name, float("nan"))
        print(f"  {name:10} direct {d:.4f}  mesh {m:.4f}  diff {abs(d - m):.2e}")
    print(json.dumps({"direct": direct_run, "mesh": mesh_run, "ratio": ratio}))


if __name__ == "__main__":
    main()
