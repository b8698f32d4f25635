"""The torchvision trainer's batch augmentation: each key does what Ultralytics' classification
training means by it, on the device, with every draw from torch's seeded CPU generator."""

from __future__ import annotations

import math

import pytest
import torch
from visionmesh.training.core.classifier_augment import augment_batch

FILL = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)


def batch(n: int = 8, size: int = 32) -> torch.Tensor:
    torch.manual_seed(123)
    return torch.rand(n, 3, size, size)


def test_nothing_asked_changes_nothing_but_the_default_flip() -> None:
    x = batch()
    torch.manual_seed(0)
    out = augment_batch(x, {"fliplr": 0.0}, erase_fill=FILL)
    assert torch.equal(out, x)
    torch.manual_seed(0)
    flipped = augment_batch(x, {}, erase_fill=FILL)  # fliplr 0.5 by default
    for a, b in zip(flipped, x, strict=True):
        assert torch.equal(a, b) or torch.equal(a, b.flip(-1))
    assert not torch.equal(flipped, x)


def test_the_same_seed_gives_the_same_augmentations() -> None:
    spec = {
        "scale": 0.5,
        "degrees": 180.0,
        "translate": 0.1,
        "hsv_h": 0.1,
        "hsv_s": 0.5,
        "hsv_v": 0.4,
        "erasing": 0.5,
        "flipud": 0.5,
    }
    x = batch()
    torch.manual_seed(7)
    first = augment_batch(x, spec, erase_fill=FILL)
    torch.manual_seed(7)
    second = augment_batch(x, spec, erase_fill=FILL)
    assert torch.equal(first, second)
    assert first.shape == x.shape and first.min() >= 0 and first.max() <= 1
    assert not torch.equal(first, x)


def test_rotation_turns_the_image() -> None:
    # A bar along the x axis: rotated by up to 90 degrees, its mass leaves the middle row.
    x = torch.zeros(64, 3, 33, 33)
    x[:, :, 15:18, 4:29] = 1.0
    torch.manual_seed(1)
    out = augment_batch(x, {"degrees": 90.0, "fliplr": 0.0}, erase_fill=FILL)
    on_row = out[:, 0, 15:18, :].sum(dim=(-2, -1)) / x[:, 0, 15:18, :].sum(dim=(-2, -1))
    assert on_row.min() < 0.5 < on_row.max()


def test_scale_crops_and_zooms_in() -> None:
    # A centred square covering 1/4 of the area grows when the crop keeps less of the image.
    x = torch.zeros(64, 3, 32, 32)
    x[:, :, 8:24, 8:24] = 1.0
    torch.manual_seed(2)
    out = augment_batch(x, {"scale": 0.9, "fliplr": 0.0}, erase_fill=FILL)
    # The crop may miss part of the square, but a zoom shows it larger somewhere.
    assert (out[:, 0] > 0.5).float().mean(dim=(-2, -1)).max() > 0.4


def test_colour_jitter_keeps_grey_grey_and_moves_hue() -> None:
    grey = torch.full((16, 3, 8, 8), 0.5)
    torch.manual_seed(3)
    out = augment_batch(grey, {"hsv_h": 0.5, "hsv_s": 0.9, "fliplr": 0.0}, erase_fill=FILL)
    assert torch.allclose(out, grey, atol=1e-5)  # no hue or saturation in grey
    red = torch.zeros(16, 3, 8, 8)
    red[:, 0] = 1.0
    torch.manual_seed(3)
    turned = augment_batch(red, {"hsv_h": 0.5, "fliplr": 0.0}, erase_fill=FILL)
    # Some images turn far enough that another channel dominates.
    assert (turned[:, 0, 0, 0] < turned[:, 1:, 0, 0].max(dim=1).values).any()
    torch.manual_seed(4)
    bright = augment_batch(grey, {"hsv_v": 0.4, "fliplr": 0.0}, erase_fill=FILL)
    levels = bright[:, 0, 0, 0]
    assert levels.min() < 0.45 and levels.max() > 0.55


@pytest.mark.parametrize("p", [0.0, 1.0])
def test_erasing_fills_a_rectangle_with_the_mean(p: float) -> None:
    x = torch.ones(8, 3, 16, 16)
    torch.manual_seed(5)
    out = augment_batch(x, {"erasing": p, "fliplr": 0.0}, erase_fill=FILL)
    erased = (out[:, 0] != 1.0).float().sum(dim=(-2, -1))
    if p == 0.0:
        assert torch.equal(out, x)
    else:
        assert (erased > 0).all()
        assert torch.allclose(
            out[:, :, :, :][out[:, 0:1].expand_as(out) != 1.0],
            FILL.expand(8, 3, 16, 16)[out[:, 0:1].expand_as(out) != 1.0],
        )
        assert math.isclose(float(x.sum()), 8 * 3 * 256)  # the input is untouched
