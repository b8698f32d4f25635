"""Synthetic shape datasets (detection, classification, product catalogues) that models
learn in a few epochs."""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CATALOG_BRANDS",
    "CATALOG_CATEGORIES",
    "DEFAULT_CLASSES",
    "MAX_CATALOG_PRODUCTS",
    "CatalogQuery",
    "SynthCatalog",
    "SynthProduct",
    "make_catalog_dataset",
    "make_classify_dataset",
    "make_detect_dataset",
    "render_catalog_queries",
    "zip_dataset",
]

DEFAULT_CLASSES: tuple[str, ...] = ("circle", "square", "triangle")

# Shapes and colours are both class-specific so that either cue alone separates the classes:
# a model from random init picks up colour within an epoch or two, shape a little later.
_SHAPES: tuple[str, ...] = (
    "circle",
    "square",
    "triangle",
    "diamond",
    "cross",
    "hexagon",
    "star",
    "ring",
)
_COLOURS: tuple[tuple[int, int, int], ...] = (
    (220, 40, 40),  # red
    (40, 190, 60),  # green
    (50, 80, 230),  # blue
    (235, 210, 40),  # yellow
    (200, 50, 210),  # magenta
    (40, 210, 215),  # cyan
    (245, 140, 30),  # orange
    (245, 245, 245),  # white
)

_MIN_REL_SIZE, _MAX_REL_SIZE = 0.20, 0.45
_JPEG_QUALITY = 95
# An equilateral triangle of circumradius R is sqrt(3)R wide: this R makes it as wide as its box.
_TRIANGLE_SCALE = 2 / np.sqrt(3)
# Fixed timestamp so that the same files always zip to the same bytes (stable content hashes).
_ZIP_DATE_TIME = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class _ClassStyle:
    shape: str
    colour: tuple[int, int, int]


def _styles(classes: Sequence[str]) -> list[_ClassStyle]:
    if not classes:
        raise ValueError("at least one class is required")
    if len(set(classes)) != len(classes):
        raise ValueError(f"class names must be unique: {list(classes)}")
    if len(classes) > len(_SHAPES):
        raise ValueError(f"at most {len(_SHAPES)} classes are supported, got {len(classes)}")
    # A class named like a known shape gets that shape; the others take the unused shapes in order.
    named = {c for c in classes if c in _SHAPES}
    spare = iter(s for s in _SHAPES if s not in named)
    return [
        _ClassStyle(shape=c if c in _SHAPES else next(spare), colour=_COLOURS[i])
        for i, c in enumerate(classes)
    ]


def _background(rng: np.random.Generator, imgsz: int) -> Image.Image:
    # Dark grey with mild noise: neutral, so that the class colours stand out, yet not constant.
    base = int(rng.integers(40, 90))
    noise = rng.normal(0.0, 12.0, size=(imgsz, imgsz, 1))
    pixels = np.clip(base + noise, 0, 255).astype(np.uint8).repeat(3, axis=2)
    return Image.fromarray(pixels, mode="RGB")


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "triangle":
        angles = np.deg2rad([-90.0, 30.0, 150.0])
        # Shift down so that the triangle's bounding box is centred on (cx, cy).
        return [(cx + r * np.cos(a), cy + r * np.sin(a) + r / 4) for a in angles]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "hexagon":
        return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in np.deg2rad(np.arange(0, 360, 60))]
    if shape == "star":
        pts = []
        for k in range(10):
            a = np.deg2rad(-90.0 + 36.0 * k)
            rr = r if k % 2 == 0 else r * 0.45
            pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
        return pts
    raise ValueError(f"not a polygon shape: {shape}")


def _draw(
    draw: ImageDraw.ImageDraw, style: _ClassStyle, box: tuple[float, float, float, float]
) -> None:
    """Draw one shape filling the square `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    fill = style.colour
    if style.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif style.shape == "square":
        draw.rectangle(box, fill=fill)
    elif style.shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, round(r * 0.35)))
    elif style.shape == "cross":
        t = r * 0.35
        draw.rectangle((x0, cy - t, x1, cy + t), fill=fill)
        draw.rectangle((cx - t, y0, cx + t, y1), fill=fill)
    elif style.shape == "triangle":
        draw.polygon(_polygon("triangle", cx, cy, r * _TRIANGLE_SCALE), fill=fill)
    else:
        draw.polygon(_polygon(style.shape, cx, cy, r), fill=fill)


def _shape_box(style: _ClassStyle, box: tuple[float, float, float, float]) -> tuple[float, ...]:
    """The tight bounding box of what `_draw` paints into `box`."""
    if style.shape != "triangle":
        return box
    x0, y0, x1, y1 = box
    cx, cy, r = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2
    xs, ys = zip(*_polygon("triangle", cx, cy, r * _TRIANGLE_SCALE), strict=True)
    return (min(xs), min(ys), max(xs), max(ys))


def _iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _detect_sample(
    rng: np.random.Generator, imgsz: int, styles: Sequence[_ClassStyle]
) -> tuple[Image.Image, list[str]]:
    image = _background(rng, imgsz)
    draw = ImageDraw.Draw(image)
    placed: list[tuple[float, ...]] = []
    lines: list[str] = []
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(len(styles)))
        # Bounded retries: the rare image that cannot fit another shape just gets fewer shapes.
        for _attempt in range(20):
            side = float(rng.uniform(_MIN_REL_SIZE, _MAX_REL_SIZE)) * imgsz
            x0 = float(rng.uniform(0, imgsz - side))
            y0 = float(rng.uniform(0, imgsz - side))
            box = (x0, y0, x0 + side, y0 + side)
            tight = _shape_box(styles[cls], box)
            if all(_iou(tight, other) < 0.05 for other in placed):
                break
        else:
            continue
        _draw(draw, styles[cls], box)
        placed.append(tight)
        bx0, by0, bx1, by1 = (min(max(v, 0.0), float(imgsz)) for v in tight)
        cx, cy = (bx0 + bx1) / 2 / imgsz, (by0 + by1) / 2 / imgsz
        w, h = (bx1 - bx0) / imgsz, (by1 - by0) / imgsz
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return image, lines


def _classify_sample(rng: np.random.Generator, imgsz: int, style: _ClassStyle) -> Image.Image:
    image = _background(rng, imgsz)
    side = float(rng.uniform(0.40, 0.70)) * imgsz
    # Centred-ish: jitter the centre by up to 10% of the image.
    cx = imgsz / 2 + float(rng.uniform(-0.1, 0.1)) * imgsz
    cy = imgsz / 2 + float(rng.uniform(-0.1, 0.1)) * imgsz
    half = side / 2
    _draw(ImageDraw.Draw(image), style, (cx - half, cy - half, cx + half, cy + half))
    return image


def _check_sizes(imgsz: int, **counts: int) -> None:
    if imgsz < 16:
        raise ValueError(f"imgsz must be at least 16, got {imgsz}")
    for name, value in counts.items():
        if value < 1:
            raise ValueError(f"{name} must be at least 1, got {value}")


def make_detect_dataset(
    out_dir: Path | str,
    *,
    n_train: int,
    n_val: int,
    imgsz: int,
    seed: int,
    classes: Sequence[str] = DEFAULT_CLASSES,
) -> Path:
    """Write an Ultralytics detection dataset under `out_dir`; returns the path of its `data.yaml`.

    Layout: `images/{train,val}/NNNNN.jpg`, `labels/{train,val}/NNNNN.txt` (`class cx cy w h`,
    normalised) and a `data.yaml` whose paths are relative to its own folder. Each image holds
    1-3 non-overlapping shapes of 20-45% of the image side; every class has its own shape and
    colour. The same arguments always produce the same files.
    """
    _check_sizes(imgsz, n_train=n_train, n_val=n_val)
    styles = _styles(classes)
    root = Path(out_dir)
    # One generator per split, so that growing the train split leaves the val split unchanged.
    for split, count, split_seed in (("train", n_train, 0), ("val", n_val, 1)):
        rng = np.random.default_rng([seed, split_seed])
        images, labels = root / "images" / split, root / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, lines = _detect_sample(rng, imgsz, styles)
            image.save(images / f"{i:05d}.jpg", quality=_JPEG_QUALITY)
            (labels / f"{i:05d}.txt").write_text("".join(f"{line}\n" for line in lines))
    # No `path:` key: Ultralytics then resolves train/val against the YAML's own folder, so the
    # dataset stays valid wherever it is unpacked (`path: .` would mean the process's cwd).
    names = "".join(f"  {i}: {name}\n" for i, name in enumerate(classes))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(
        f"train: images/train\nval: images/val\nnc: {len(classes)}\nnames:\n{names}"
    )
    return data_yaml


def make_classify_dataset(
    out_dir: Path | str,
    *,
    n_per_class_train: int,
    n_per_class_val: int,
    imgsz: int,
    seed: int,
    classes: Sequence[str] = DEFAULT_CLASSES,
) -> Path:
    """Write an image-folder dataset (`{train,val}/<class>/NNNNN.jpg`); returns its root.

    One centred-ish shape per image, 40-70% of the image side; the class is the shape and its
    colour. The same arguments always produce the same files.
    """
    _check_sizes(imgsz, n_per_class_train=n_per_class_train, n_per_class_val=n_per_class_val)
    styles = _styles(classes)
    root = Path(out_dir)
    for split, count, split_seed in (("train", n_per_class_train, 0), ("val", n_per_class_val, 1)):
        rng = np.random.default_rng([seed, split_seed])
        for name, style in zip(classes, styles, strict=True):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = _classify_sample(rng, imgsz, style)
                image.save(folder / f"{i:05d}.jpg", quality=_JPEG_QUALITY)
    return root


def zip_dataset(src_dir: Path | str, zip_path: Path | str) -> Path:
    """Zip every file under `src_dir` with paths relative to it; same files give the same bytes."""
    src, dst = Path(src_dir), Path(zip_path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst_resolved = dst.resolve()
    with zipfile.ZipFile(dst, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in src.rglob("*") if p.is_file()):
            if path.resolve() == dst_resolved:
                continue  # the archive may be written inside the folder it packs
            info = zipfile.ZipInfo(path.relative_to(src).as_posix(), date_time=_ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())
    return dst


# --- product catalogues -------------------------------------------------------------------

_COLOUR_NAMES: tuple[str, ...] = (
    "red",
    "green",
    "blue",
    "yellow",
    "magenta",
    "cyan",
    "orange",
    "white",
)
_TEXTURES: tuple[str, ...] = ("solid", "stripes", "dots", "checker")
CATALOG_BRANDS: tuple[str, ...] = ("acme", "globex", "initech", "umbrella")
"""Product i has brand `CATALOG_BRANDS[i % 4]`."""
CATALOG_CATEGORIES: tuple[str, ...] = ("shoes", "boots", "bags", "hats", "shirts")
"""Product i has category `CATALOG_CATEGORIES[(i // 4) % 5]`: with the brands, every
(brand, category) pair occurs once in each run of 20 products."""
MAX_CATALOG_PRODUCTS = len(_SHAPES) * len(_COLOURS) * len(_TEXTURES)
"""Each product is a distinct shape x colour x texture combination."""


@dataclass(frozen=True, slots=True)
class SynthProduct:
    """One synthetic product: what products.jsonl says and which reference images it has."""

    id: str
    metadata: Mapping[str, Any]
    images: tuple[str, ...]
    """Image paths relative to the catalogue root (`images/<id>/NN.jpg`)."""
    shape: str
    colour: str
    texture: str


@dataclass(frozen=True, slots=True)
class SynthCatalog:
    """What `make_catalog_dataset` wrote: the answer key for tests and benchmarks."""

    root: Path
    products: tuple[SynthProduct, ...]
    imgsz: int
    seed: int

    def product(self, product_id: str) -> SynthProduct:
        return next(p for p in self.products if p.id == product_id)

    @property
    def image_count(self) -> int:
        return sum(len(p.images) for p in self.products)


@dataclass(frozen=True, slots=True)
class CatalogQuery:
    """A held-out query image of a known product."""

    path: Path
    product_id: str


@dataclass(frozen=True, slots=True)
class _ProductStyle:
    shape: str
    colour_index: int
    texture: str


def _product_styles(n_products: int, seed: int) -> list[_ProductStyle]:
    # A fixed order of all combinations for a seed, so that adding products keeps the first
    # ones unchanged.
    order = np.random.default_rng([seed, 99]).permutation(MAX_CATALOG_PRODUCTS)[:n_products]
    styles: list[_ProductStyle] = []
    for combo in order.tolist():
        shape, rest = divmod(combo, len(_COLOURS) * len(_TEXTURES))
        colour, texture = divmod(rest, len(_TEXTURES))
        styles.append(_ProductStyle(_SHAPES[shape], colour, _TEXTURES[texture]))
    return styles


def _product_metadata(index: int, style: _ProductStyle) -> dict[str, Any]:
    colour = _COLOUR_NAMES[style.colour_index]
    return {
        "name": f"{colour.title()} {style.texture} {style.shape}",
        "brand": CATALOG_BRANDS[index % len(CATALOG_BRANDS)],
        "category": CATALOG_CATEGORIES[(index // len(CATALOG_BRANDS)) % len(CATALOG_CATEGORIES)],
        "price": round(4.99 + (index * 7.25) % 95, 2),
        "attributes": {"shape": style.shape, "colour": colour, "texture": style.texture},
    }


def _texture(style: _ProductStyle, side: int) -> Image.Image:
    """The product's colour with its pattern in a darker shade, `side` pixels square."""
    colour = _COLOURS[style.colour_index]
    dark = tuple(int(c * 0.4) for c in colour)
    tile = Image.new("RGB", (side, side), colour)
    draw = ImageDraw.Draw(tile)
    step = max(4, side // 6)
    if style.texture == "stripes":
        for x in range(0, side, step):
            draw.rectangle((x, 0, x + step // 2 - 1, side), fill=dark)
    elif style.texture == "dots":
        r = max(1, step // 4)
        for y in range(step // 2, side, step):
            for x in range(step // 2, side, step):
                draw.ellipse((x - r, y - r, x + r, y + r), fill=dark)
    elif style.texture == "checker":
        for y in range(0, side, step):
            for x in range(0, side, step):
                if (x // step + y // step) % 2:
                    draw.rectangle((x, y, x + step - 1, y + step - 1), fill=dark)
    return tile


def _catalog_background(rng: np.random.Generator, imgsz: int) -> Image.Image:
    """Grey noise, a muted colour or a gradient: backgrounds vary between renders."""
    kind = int(rng.integers(3))
    if kind == 0:
        return _background(rng, imgsz)
    base = rng.integers(30, 110, size=3)
    if kind == 1:
        noise = rng.normal(0.0, 10.0, size=(imgsz, imgsz, 3))
        pixels = np.clip(base + noise, 0, 255)
    else:
        other = rng.integers(30, 110, size=3)
        ramp = np.linspace(0.0, 1.0, imgsz)[:, None, None]
        pixels = base * (1 - ramp) + other * ramp
        pixels = np.broadcast_to(pixels, (imgsz, imgsz, 3))
        if rng.integers(2):
            pixels = pixels.transpose(1, 0, 2)
    return Image.fromarray(np.ascontiguousarray(pixels).astype(np.uint8), mode="RGB")


def _render_product(
    rng: np.random.Generator, imgsz: int, style: _ProductStyle
) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One render (random scale, rotation, background, position) and the object's box."""
    image = _catalog_background(rng, imgsz)
    side = max(8, int(float(rng.uniform(0.35, 0.75)) * imgsz))
    mask = Image.new("RGB", (side, side))
    _draw(
        ImageDraw.Draw(mask), _ClassStyle(style.shape, (255, 255, 255)), (0, 0, side - 1, side - 1)
    )
    angle = float(rng.uniform(0.0, 360.0))
    shape_mask = mask.convert("L").rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    texture = _texture(style, side).rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)
    w, h = texture.size
    if w > imgsz or h > imgsz:
        scale = imgsz / max(w, h)
        size = (max(1, int(w * scale)), max(1, int(h * scale)))
        texture, shape_mask = texture.resize(size), shape_mask.resize(size)
        w, h = size
    x = int(rng.integers(0, imgsz - w + 1))
    y = int(rng.integers(0, imgsz - h + 1))
    image.paste(texture, (x, y), shape_mask)
    return image, (x, y, x + w, y + h)


def make_catalog_dataset(
    out_dir: Path | str,
    *,
    n_products: int = 24,
    renders: int = 4,
    imgsz: int = 128,
    seed: int = 0,
) -> SynthCatalog:
    """Write a product catalogue (`products.jsonl`, `images/<id>/NN.jpg`) under `out_dir`.

    Product `i` is `p{i:04d}`, a distinct shape x colour x texture combination, with
    metadata `name`, `brand` (`CATALOG_BRANDS[i % 4]`), `category`
    (`CATALOG_CATEGORIES[(i // 4) % 5]`), `price` and nested `attributes`, so that filters
    such as `brand = acme and category in [shoes, boots]` select known subsets. Each product
    has `renders` reference images that differ in scale, rotation, background and position.
    The same arguments always produce the same files, and adding products leaves the
    earlier ones unchanged. Returns what was written (the answer key).
    """
    _check_sizes(imgsz, n_products=n_products, renders=renders)
    if n_products > MAX_CATALOG_PRODUCTS:
        raise ValueError(f"at most {MAX_CATALOG_PRODUCTS} products are supported, got {n_products}")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    products: list[SynthProduct] = []
    lines: list[str] = []
    for index, style in enumerate(_product_styles(n_products, seed)):
        product_id = f"p{index:04d}"
        metadata = _product_metadata(index, style)
        folder = root / "images" / product_id
        folder.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng([seed, 0, index])
        images: list[str] = []
        for n in range(renders):
            image, _ = _render_product(rng, imgsz, style)
            image.save(folder / f"{n:02d}.jpg", quality=_JPEG_QUALITY)
            images.append(f"images/{product_id}/{n:02d}.jpg")
        products.append(
            SynthProduct(
                id=product_id,
                metadata=metadata,
                images=tuple(images),
                shape=style.shape,
                colour=_COLOUR_NAMES[style.colour_index],
                texture=style.texture,
            )
        )
        lines.append(json.dumps({"id": product_id, **metadata}, sort_keys=True))
    (root / "products.jsonl").write_text("".join(f"{line}\n" for line in lines))
    return SynthCatalog(root=root, products=tuple(products), imgsz=imgsz, seed=seed)


def render_catalog_queries(
    catalog: SynthCatalog,
    out_dir: Path | str,
    *,
    per_product: int = 2,
    imgsz: int | None = None,
    seed: int = 1,
) -> list[CatalogQuery]:
    """Held-out query images of every product: `out_dir/<product_id>/NN.jpg`.

    Fresh renders (another random stream than the references, so never the same image),
    half of them then cropped around the object with a random margin and resized back, as
    a detector's crop would be. The folder names the answer; so does the returned list.
    """
    size = imgsz or catalog.imgsz
    _check_sizes(size, per_product=per_product)
    styles = _product_styles(len(catalog.products), catalog.seed)
    out = Path(out_dir)
    queries: list[CatalogQuery] = []
    for index, (product, style) in enumerate(zip(catalog.products, styles, strict=True)):
        folder = out / product.id
        folder.mkdir(parents=True, exist_ok=True)
        # Stream 1 (references use stream 0), mixed with the query seed.
        rng = np.random.default_rng([catalog.seed, 1, seed, index])
        for n in range(per_product):
            image, (x0, y0, x1, y1) = _render_product(rng, size, style)
            if n % 2:
                margin = float(rng.uniform(0.0, 0.25)) * max(x1 - x0, y1 - y0)
                box = (
                    max(0, int(x0 - margin)),
                    max(0, int(y0 - margin)),
                    min(size, int(x1 + margin)),
                    min(size, int(y1 + margin)),
                )
                image = image.crop(box).resize((size, size), Image.Resampling.BILINEAR)
            path = folder / f"{n:02d}.jpg"
            image.save(path, quality=_JPEG_QUALITY)
            queries.append(CatalogQuery(path=path, product_id=product.id))
    return queries
