"""Image checks: every file with an image suffix must decode, on a bounded thread pool."""

from __future__ import annotations

import io
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Final

from PIL import Image
from visionmesh.common.errors import FieldViolation
from visionmesh.gateway.core.archive._violations import Reason

# Only real raster formats: without this list Pillow would also "open" text formats
# such as XBM, so a text file renamed .jpg could pass. JPEG also opens MPO files.
_PIL_FORMATS: Final = ("BMP", "JPEG", "PNG", "TIFF", "WEBP")
# Decoded images waiting in the thread pool, bounded so memory stays flat on big archives.
_MAX_PENDING_BYTES: Final = 64 << 20


def check_image(data: bytes) -> str | None:
    """Why `data` is not a usable image, or None."""
    try:
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
            im.verify()
        # verify() leaves the image unusable and does not decode pixels; a full load
        # catches truncation. draft() lets libjpeg decode at 1/8 scale, grey only.
        with Image.open(io.BytesIO(data), formats=_PIL_FORMATS) as im:
            im.draft("L", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except Image.DecompressionBombError as exc:
        return f"image too large to decode safely: {exc}"
    except Image.UnidentifiedImageError:
        return "not a decodable image (expected JPEG, PNG, BMP, TIFF or WebP data)"
    except Exception as exc:
        # Hostile or damaged files make Pillow raise almost anything (OSError,
        # SyntaxError, ValueError, struct.error...); each one means "bad image".
        return f"not a decodable image: {exc or type(exc).__name__}"
    return None


class ImageChecker:
    """Decodes images on a thread pool, collecting results first-in-first-out.

    Each image carries its position in the scan; `frontier` is the first position whose
    result may still be unknown, so everything before it is final whatever the timing.
    """

    def __init__(self, workers: int, found: list[tuple[int, FieldViolation]]) -> None:
        self._found = found
        self._pool = ThreadPoolExecutor(workers, "archive-decode") if workers > 1 else None
        self._max_pending = 4 * workers
        self._pending: deque[tuple[int, str, int, Future[str | None]]] = deque()
        self._pending_bytes = 0

    def __enter__(self) -> ImageChecker:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        try:
            if exc_type is None:
                while self._pending:
                    self._collect_one()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)

    def frontier(self, position: int) -> int:
        """The first position not known yet, given that the scan is at `position`."""
        return self._pending[0][0] if self._pending else position

    def submit(self, position: int, path: str, data: bytes) -> None:
        if self._pool is None:
            self._record(position, path, check_image(data))
            return
        future = self._pool.submit(check_image, data)
        self._pending.append((position, path, len(data), future))
        self._pending_bytes += len(data)
        while len(self._pending) > self._max_pending or self._pending_bytes > _MAX_PENDING_BYTES:
            self._collect_one()

    def _collect_one(self) -> None:
        position, path, size, future = self._pending.popleft()
        self._pending_bytes -= size
        self._record(position, path, future.result())

    def _record(self, position: int, path: str, problem: str | None) -> None:
        if problem is not None:
            self._found.append((position, FieldViolation(path, problem, Reason.BAD_IMAGE)))
