"""Embedders against their frameworks: the features of a direct forward, on the same pixels.

Each oracle is independent of the code under test: pixels come from the framework's own
torchvision transforms, and features from a forward hook on the uncut model's
classification layer (or transformers' pooler output), so a wrong cut or a wrong transform
fails here.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms
from visionmesh.common.classifiers import (
    CHECKPOINT_FORMAT,
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_torchvision_classifier,
    load_classifier,
)
from visionmesh.common.errors import FailedPrecondition, InvalidArgument, NotFound
from visionmesh.embedding.core.backbones import BackboneEmbedder, load_backbone
from visionmesh.embedding.core.dinov2 import (
    describe_dinov2,
    dinov2_embedder,
    dinov2_preprocess,
    discover_dinov2,
    load_dinov2,
)
from visionmesh.embedding.core.embedders import (
    Embedder,
    EmbedderInfo,
    capabilities,
    resolve_device,
)

from tests.models import NAMES, classifier_checkpoint, yolo_checkpoint

os.environ.setdefault("YOLO_OFFLINE", "1")

IMGSZ = 64
SIZES = ((50, 70), (64, 64), (90, 41), (33, 120), (64, 80), (71, 71), (120, 96))


def _images(sizes: Sequence[tuple[int, int]] = SIZES, seed: int = 0) -> list[npt.NDArray[np.uint8]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _pixels(images: Sequence[npt.NDArray[np.uint8]], transform: Any) -> torch.Tensor:
    return torch.stack([transform(Image.fromarray(image)) for image in images])


def _hooked_input(model: nn.Module, layer: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """What `layer` reads when the whole, uncut model runs on `pixels`."""
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, args, _out: seen.append(args[0]))
    try:
        with torch.inference_mode():
            model(pixels)
    finally:
        handle.remove()
    return seen[0]


def _normalised(features: torch.Tensor) -> torch.Tensor:
    return features / features.norm(dim=1, keepdim=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embedders")


@pytest.fixture(scope="module")
def resnet_checkpoint(workdir: Path) -> Path:
    torch.manual_seed(0)
    return classifier_checkpoint(workdir / "resnet18.pt", imgsz=IMGSZ)


@pytest.fixture(scope="module")
def yolo_cls_checkpoint(workdir: Path) -> Path:
    torch.manual_seed(0)
    return yolo_checkpoint(workdir / "yolo11n-cls.pt", "yolo11n-cls.yaml")


@pytest.fixture(scope="module")
def resnet(resnet_checkpoint: Path) -> BackboneEmbedder:
    return load_backbone(
        resnet_checkpoint,
        framework="torchvision",
        name="shapes-resnet",
        model_version_id="mv-resnet",
        device="cpu",
        batch_size=4,
    )


# --- our own classifiers ------------------------------------------------------------------


def test_torchvision_backbone_is_the_pooled_features_before_fc(
    resnet: BackboneEmbedder, resnet_checkpoint: Path
) -> None:
    images = _images()
    stored = load_classifier(resnet_checkpoint)
    # The classifier trainer's evaluation: a plain resize of the PIL image, then mean/std.
    pixels = _pixels(
        images,
        transforms.Compose(
            [
                transforms.Resize((IMGSZ, IMGSZ), antialias=True),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        ),
    )
    torch.testing.assert_close(torch.from_numpy(resnet.preprocess(images)), pixels)
    expected = _hooked_input(stored.model, stored.model.fc, pixels)  # type: ignore[arg-type]
    assert expected.shape == (len(images), 512)

    raw = resnet.embed(images, normalize=False)
    assert raw.dtype == np.float32 and raw.shape == (len(images), 512)
    torch.testing.assert_close(torch.from_numpy(raw), expected)
    vectors = resnet.embed(images)
    torch.testing.assert_close(torch.from_numpy(vectors), _normalised(expected))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)

    assert isinstance(resnet, Embedder)
    assert resnet.info == EmbedderInfo(
        name="shapes-resnet",
        dim=512,
        family="backbone",
        imgsz=IMGSZ,
        description=resnet.info.description,
        model_version_id="mv-resnet",
    )
    assert "resnet18" in resnet.info.description
    assert resnet.device == "cpu"


def test_ultralytics_backbone_is_the_pooled_features_before_linear(
    yolo_cls_checkpoint: Path,
) -> None:
    from ultralytics import YOLO
    from ultralytics.data.augment import classify_transforms

    embedder = load_backbone(
        yolo_cls_checkpoint,
        framework="ultralytics",
        name="shapes-yolo",
        model_version_id="mv-yolo",
        imgsz=IMGSZ,
        device="cpu",
        batch_size=3,
    )
    images = _images()
    # Ultralytics' own evaluation transform, on the PIL image as its validator reads it.
    pixels = _pixels(images, classify_transforms(IMGSZ))
    torch.testing.assert_close(torch.from_numpy(embedder.preprocess(images)), pixels)

    model: Any = YOLO(str(yolo_cls_checkpoint)).model
    model.float().eval()
    head = model.model[-1]
    expected = _hooked_input(model, head.linear, pixels)
    assert expected.shape == (len(images), head.linear.in_features) == (len(images), 1280)

    raw = embedder.embed(images, normalize=False)
    torch.testing.assert_close(torch.from_numpy(raw), expected)
    torch.testing.assert_close(torch.from_numpy(embedder.embed(images)), _normalised(expected))
    assert (embedder.dim, embedder.family, embedder.imgsz) == (1280, "backbone", IMGSZ)
    assert embedder.model_version_id == "mv-yolo"
    assert embedder.info.description.startswith("yolo11n-cls classifier (3 classes)")


def _squeezenet_features(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    classifier: Any = model.classifier
    feature_map = _hooked_input(model, classifier[1], pixels)
    return feature_map.mean(dim=(2, 3))


def _last_linear_input(model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    classifier: Any = model.classifier
    return _hooked_input(model, classifier[-1], pixels)


@pytest.mark.parametrize(
    ("arch", "dim", "features"),
    [
        ("mobilenet_v3_small", 1024, _last_linear_input),
        ("efficientnet_b0", 1280, _last_linear_input),
        ("squeezenet1_1", 512, _squeezenet_features),
    ],
)
def test_other_torchvision_architectures_cut_at_their_classification_layer(
    workdir: Path,
    arch: str,
    dim: int,
    features: Callable[[nn.Module, torch.Tensor], torch.Tensor],
) -> None:
    imgsz = 32
    torch.manual_seed(1)
    model = build_torchvision_classifier(arch, num_classes=len(NAMES), imgsz=imgsz)
    path = workdir / f"{arch}.pt"
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "model_state": model.state_dict(),
            "arch": arch,
            "class_names": list(NAMES),
            "imgsz": imgsz,
        },
        path,
    )
    embedder = load_backbone(
        path, framework="torchvision", name=arch, model_version_id="mv", device="cpu"
    )
    assert (embedder.dim, embedder.imgsz) == (dim, imgsz)
    images = _images(SIZES[:4])
    pixels = torch.from_numpy(embedder.preprocess(images))
    expected = features(load_classifier(path).model, pixels)
    assert expected.shape == (len(images), dim)
    torch.testing.assert_close(torch.from_numpy(embedder.embed(images, normalize=False)), expected)


def test_backbones_refuse_what_is_not_a_classifier_of_their_framework(
    workdir: Path, yolo_cls_checkpoint: Path, resnet_checkpoint: Path
) -> None:
    with pytest.raises(FailedPrecondition, match="cannot load its torchvision checkpoint"):
        load_backbone(
            yolo_cls_checkpoint, framework="torchvision", name="x", model_version_id="mv-x"
        )
    with pytest.raises(FailedPrecondition, match="cannot load its Ultralytics checkpoint"):
        load_backbone(resnet_checkpoint, framework="ultralytics", name="x", model_version_id="mv-x")
    with pytest.raises(FailedPrecondition, match="'onnx' is not torchvision or ultralytics"):
        load_backbone(resnet_checkpoint, framework="onnx", name="x", model_version_id="mv-x")
    detector = yolo_checkpoint(workdir / "yolo11n.pt", "yolo11n.yaml")
    with pytest.raises(FailedPrecondition):
        load_backbone(detector, framework="ultralytics", name="x", model_version_id="mv-x")


# --- batching, inputs, devices ------------------------------------------------------------


def test_batches_of_three_equal_one_image_at_a_time(resnet: BackboneEmbedder) -> None:
    images = _images()
    resnet.batch_size = 3
    batched = resnet.embed(images)
    resnet.batch_size = 1
    one_by_one = resnet.embed(images)
    resnet.batch_size = 4
    assert batched.shape == (len(images), resnet.dim)
    np.testing.assert_allclose(batched, one_by_one, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(batched[2:3], resnet.embed(images[2:3]), rtol=1e-4, atol=1e-6)


def test_images_are_checked_and_none_give_an_empty_matrix(resnet: BackboneEmbedder) -> None:
    good = _images(SIZES[:1])[0]
    with pytest.raises(InvalidArgument) as caught:
        resnet.embed([good, good[..., 0]])
    assert caught.value.field_violations[0].field == "images[1]"
    with pytest.raises(InvalidArgument, match=r"images\[0\]: must be H x W x 3 uint8"):
        resnet.embed([good.astype(np.float32)])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument, match=r"images\[0\]: is empty"):
        resnet.embed([np.zeros((0, 5, 3), dtype=np.uint8)])
    empty = resnet.embed([])
    assert empty.shape == (0, 512) and empty.dtype == np.float32


def test_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected_auto = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected_auto
    assert resolve_device("").type == expected_auto
    for bad in ("gpu", "cuda:x", "tpu:0"):
        with pytest.raises(FailedPrecondition) as caught:
            resolve_device(bad)
        assert caught.value.field_violations[0].field == "device"
    if torch.cuda.is_available():
        count = torch.cuda.device_count()
        assert resolve_device("cuda:0") == torch.device("cuda", 0)
        with pytest.raises(FailedPrecondition, match=f"this machine has {count}"):
            resolve_device(f"cuda:{count}")
    else:
        with pytest.raises(FailedPrecondition) as caught:
            resolve_device("cuda")
        assert caught.value.field_violations[0].field == "device"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_with_amp_agrees_with_the_cpu(resnet_checkpoint: Path) -> None:
    images = _images()
    kwargs: dict[str, Any] = {
        "framework": "torchvision",
        "name": "r",
        "model_version_id": "mv",
        "batch_size": 3,
    }
    cpu = load_backbone(resnet_checkpoint, device="cpu", **kwargs).embed(images)
    gpu = load_backbone(resnet_checkpoint, device="cuda", **kwargs)
    assert gpu.device == "cuda:0"
    on_gpu = gpu.embed(images)
    assert on_gpu.dtype == np.float32
    # fp16 autocast: the cosine similarity to the float32 vectors stays near 1.
    assert (np.sum(cpu * on_gpu, axis=1) > 0.999).all()


# --- DINOv2 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dinov2_root(workdir: Path) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    root = workdir / "dinov2"
    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        patch_size=14,
        image_size=224,
    )
    Dinov2Model(config).save_pretrained(root / "dinov2_tiny")
    # Neighbours that are not DINOv2 models: another model type, and no config at all.
    (root / "vit_other").mkdir()
    (root / "vit_other" / "config.json").write_text(json.dumps({"model_type": "vit"}))
    (root / "empty").mkdir()
    return root


def _dinov2_pixels(images: Sequence[npt.NDArray[np.uint8]]) -> torch.Tensor:
    """DINOv2's evaluation transform as its repository composes it with torchvision."""
    return _pixels(
        images,
        transforms.Compose(
            [
                transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
                transforms.CenterCrop(224),
                transforms.ToTensor(),
                transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        ),
    )


def test_dinov2_preprocessing_is_its_evaluation_transform() -> None:
    images = _images(((300, 400), (256, 256), (500, 260), (100, 60), (224, 225)))
    ours = torch.from_numpy(dinov2_preprocess(images))
    assert ours.shape == (len(images), 3, 224, 224)
    torch.testing.assert_close(ours, _dinov2_pixels(images), rtol=0, atol=1e-5)


def test_dinov2_is_the_normalised_cls_token_of_a_direct_forward(dinov2_root: Path) -> None:
    from transformers import Dinov2Model

    assert discover_dinov2(dinov2_root) == {"dinov2_tiny": dinov2_root / "dinov2_tiny"}
    embedder = dinov2_embedder("dinov2_tiny", dinov2_root, device="cpu", batch_size=2)
    assert (embedder.name, embedder.dim, embedder.family, embedder.imgsz) == (
        "dinov2_tiny",
        32,
        "dinov2",
        224,
    )
    assert embedder.model_version_id == ""

    images = _images(((300, 400), (256, 256), (500, 260), (100, 60), (224, 225)))
    pixels = torch.from_numpy(embedder.preprocess(images))
    direct = Dinov2Model.from_pretrained(str(dinov2_root / "dinov2_tiny"), local_files_only=True)
    with torch.inference_mode():
        outputs = direct.eval()(pixel_values=pixels, output_hidden_states=True)
        # The pooler output is the CLS token of the final layer norm's output.
        after_norm = direct.layernorm(outputs.hidden_states[-1])[:, 0]
    cls = outputs.pooler_output
    torch.testing.assert_close(cls, after_norm)

    vectors = embedder.embed(images)
    torch.testing.assert_close(torch.from_numpy(vectors), _normalised(cls))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    torch.testing.assert_close(torch.from_numpy(embedder.embed(images, normalize=False)), cls)
    # And on torchvision's pixels, within what a last-bit difference in them allows.
    with torch.inference_mode():
        via_torchvision = direct(pixel_values=_dinov2_pixels(images)).pooler_output
    torch.testing.assert_close(
        torch.from_numpy(embedder.embed(images, normalize=False)),
        via_torchvision,
        rtol=1e-4,
        atol=1e-4,
    )


def test_dinov2_missing_or_foreign_directories(dinov2_root: Path) -> None:
    with pytest.raises(NotFound, match=r"'dinov2_vitb14' not found \(DINOv2 models present: "):
        dinov2_embedder("dinov2_vitb14", dinov2_root)
    with pytest.raises(NotFound):
        load_dinov2(dinov2_root / "absent")
    for foreign in ("vit_other", "empty"):
        with pytest.raises(FailedPrecondition, match="holds no DINOv2 model"):
            load_dinov2(dinov2_root / foreign)
    assert discover_dinov2(dinov2_root / "absent") == {}


def test_capabilities_list_loaded_and_discovered_embedders(
    resnet: BackboneEmbedder, dinov2_root: Path
) -> None:
    listed = capabilities([resnet], dinov2_root=dinov2_root)
    assert [(i.name, i.dim, i.family, i.imgsz, i.model_version_id) for i in listed] == [
        ("dinov2_tiny", 32, "dinov2", 224, ""),
        ("shapes-resnet", 512, "backbone", IMGSZ, "mv-resnet"),
    ]
    assert listed[0] == describe_dinov2("dinov2_tiny", dinov2_root / "dinov2_tiny")
    assert all(info.description for info in listed)
    assert capabilities([]) == []
