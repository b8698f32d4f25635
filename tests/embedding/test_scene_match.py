"""Scene matching: a real exported detector (ONNX Runtime through the inference service's
Predictor) finds the objects, and each box's crop is matched to the collection's products."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
from visionmesh.api.common.v1 import image_pb2
from visionmesh.api.embedding.v1 import embedding_pb2 as pb
from visionmesh.api.export.v1 import export_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.cli.synth import make_catalog_dataset
from visionmesh.common.auth import Principal, bind_principal
from visionmesh.common.errors import FailedPrecondition, NotFound
from visionmesh.common.vision.processing import decode_image
from visionmesh.embedding.core.service import Detect, crop_box
from visionmesh.export.core.metadata import metadata_dict
from visionmesh.export.core.pipeline import ExportPackage
from visionmesh.inference.core.onnx_runtime import OnnxRuntimeModel
from visionmesh.inference.core.predictor import ImageInput, Predictor

from tests.embedding.env import BACKBONE_VERSION, TENANT_A, TENANT_B, models_dir, running_core
from tests.models import export_package, export_target, yolo_checkpoint

pytestmark = pytest.mark.timeout(240)

DEPLOYMENT = "shelf"
BACKBONE = f"mv-{BACKBONE_VERSION}"
OPTIONS = inference_pb2.PredictOptions(max_det=6)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return models_dir(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> ExportPackage:
    root = tmp_path_factory.mktemp("detector")
    torch.manual_seed(0)
    checkpoint = yolo_checkpoint(root / "det.pt", "yolo11n.yaml", confident=True)
    spec = export_pb2.ExportSpec(dynamic_batch=True, max_batch_size=4)
    return export_package(
        root / "x", checkpoint, export_target(spec, "ultralytics", "detect", ()), images=2
    )


def _detect(package: ExportPackage) -> Detect:
    """Tenant A's detector deployment, answered by the inference service's own Predictor."""
    predictor = Predictor(
        metadata_dict(package.metadata),
        OnnxRuntimeModel(package.path("model.onnx"), max_batch_size=4),
        max_image_bytes=5_000_000,
        max_image_pixels=4_000_000,
    )

    async def detect(
        caller: Principal,
        deployment: str,
        images: Sequence[bytes],
        options: inference_pb2.PredictOptions,
    ) -> list[list[inference_pb2.Detection]]:
        if caller.tenant_id != TENANT_A.tenant_id or deployment != DEPLOYMENT:
            raise NotFound(resource_type="deployment", resource_id=deployment)
        inputs = [ImageInput(field=f"images[{i}]", data=data) for i, data in enumerate(images)]
        response = await predictor.predict(inputs, options)
        return [list(result.detections) for result in response.results]

    return detect


def _png(pixels: np.ndarray) -> bytes:
    return bytes(cv2.imencode(".png", pixels[..., ::-1])[1].tobytes())


async def test_each_detected_object_is_matched_to_its_product(
    tmp_path: Path, models: tuple[Path, Path], detector: ExportPackage
) -> None:
    catalog = make_catalog_dataset(tmp_path / "catalog", n_products=3, renders=1, imgsz=160)
    scenes = [(catalog.root / p.images[0]).read_bytes() for p in catalog.products]
    detect = _detect(detector)
    async with running_core(tmp_path / "core", models, detect=detect) as (core, _):
        with bind_principal(TENANT_A):
            # What the detector finds, asked directly: the answer key for the boxes.
            found = await detect(TENANT_A, DEPLOYMENT, scenes[:2], OPTIONS)
            assert all(0 < len(boxes) <= 6 for boxes in found)
            # Our backbone: a random-init tiny DINOv2's CLS token hardly depends on the image,
            # a random-init resnet's pooled features do.
            await core.create_collection(pb.CreateCollectionRequest(name="shelf", model=BACKBONE))
            # Every object's crop is a product of its own (lossless PNG, so the stored
            # vector is exactly what the crop of that box embeds to).
            points = []
            for scene_index, (scene, boxes) in enumerate(zip(scenes, found, strict=False)):
                pixels = decode_image(scene)
                for box_index, detection in enumerate(boxes):
                    crop = crop_box(pixels, detection.box)
                    assert crop is not None
                    product = f"s{scene_index}-o{box_index}"
                    points.append(
                        pb.ImagePoint(
                            id=product, image=image_pb2.Image(data=_png(crop)), product_id=product
                        )
                    )
            await core.upsert_images(pb.UpsertImagesRequest(collection="shelf", points=points))

            response = await core.match(
                pb.MatchRequest(
                    collection="shelf",
                    images=[image_pb2.Image(data=s) for s in scenes[:2]],
                    detector_deployment=DEPLOYMENT,
                    detector_options=OPTIONS,
                    top_k=100,
                )
            )
            assert len(response.results) == 2
            for scene_index, (result, boxes) in enumerate(
                zip(response.results, found, strict=True)
            ):
                assert not result.products and not result.matched
                assert [o.detection for o in result.objects] == boxes
                for box_index, matched in enumerate(result.objects):
                    assert matched.matched and len(matched.products) == len(points)
                    scores = {m.product_id: m.score for m in matched.products}
                    own = scores[f"s{scene_index}-o{box_index}"]
                    # The crop of this box is exactly the stored crop: similarity 1, and it
                    # ranks first (the random detector boxes one region per scene under
                    # several classes, so its scene's crops tie), the other scene's below.
                    assert own == pytest.approx(1.0, abs=1e-5)
                    assert own >= matched.products[0].score - 1e-6
                    others = [v for k, v in scores.items() if not k.startswith(f"s{scene_index}-")]
                    assert others and max(others) < own - 1e-3

            # The third scene's objects are in no product: nothing reaches a high threshold.
            unknown = await core.match(
                pb.MatchRequest(
                    collection="shelf",
                    images=[image_pb2.Image(data=scenes[2])],
                    detector_deployment=DEPLOYMENT,
                    detector_options=OPTIONS,
                    threshold=0.9999,
                )
            )
            objects: Any = unknown.results[0].objects
            assert len(objects) > 0
            assert all(not o.matched and not o.products for o in objects)

        with bind_principal(TENANT_B), pytest.raises(NotFound):
            await core.create_collection(
                pb.CreateCollectionRequest(name="shelf", model="dinov2_tiny")
            )
            await core.match(
                pb.MatchRequest(
                    collection="shelf",
                    images=[image_pb2.Image(data=scenes[0])],
                    detector_deployment=DEPLOYMENT,
                )
            )


async def test_scene_matching_without_an_inference_service_is_a_failed_precondition(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    catalog = make_catalog_dataset(tmp_path / "catalog", n_products=1, renders=1, imgsz=64)
    scene = (catalog.root / catalog.products[0].images[0]).read_bytes()
    async with running_core(tmp_path / "core", models) as (core, _):
        with bind_principal(TENANT_A):
            await core.create_collection(
                pb.CreateCollectionRequest(name="shelf", model="dinov2_tiny")
            )
            with pytest.raises(FailedPrecondition):
                await core.match(
                    pb.MatchRequest(
                        collection="shelf",
                        images=[image_pb2.Image(data=scene)],
                        detector_deployment=DEPLOYMENT,
                    )
                )


def test_crop_box_clips_to_the_image() -> None:
    image = np.arange(10 * 20 * 3, dtype=np.uint8).reshape(10, 20, 3)
    box = inference_pb2.Box(x1=-5.0, y1=2.4, x2=7.2, y2=30.0)
    crop = crop_box(image, box)
    assert crop is not None and crop.shape == (8, 8, 3)
    np.testing.assert_array_equal(crop, image[2:10, 0:8])
    assert crop_box(image, inference_pb2.Box(x1=25, y1=0, x2=30, y2=5)) is None
    assert crop_box(image, inference_pb2.Box(x1=3, y1=3, x2=3, y2=8)) is None
