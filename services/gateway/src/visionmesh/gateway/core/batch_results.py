"""Reading a batch inference job's results: JSON Lines files paged by a global line offset."""

from __future__ import annotations

import base64
import binascii
import re
from collections import OrderedDict
from dataclasses import dataclass

from google.protobuf import json_format
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.errors import Internal, InvalidArgument
from visionmesh.common.logging import get_logger
from visionmesh.common.storage import ObjectInfo, ObjectStore

__all__ = ["RESULTS_FILE", "BatchResultsReader", "ResultsPage", "decode_page_token"]

_log = get_logger(__name__)

RESULTS_FILE = re.compile(r"predictions-(\d{5,})\.jsonl")
"""A results file's name under the job's output prefix (the batch worker writes them)."""
DEFAULT_RESULTS_PAGE_SIZE = 100


@dataclass(frozen=True, slots=True)
class ResultsPage:
    results: list[inference_pb2.ImageResult]
    next_offset: int | None
    """Offset of the next page; None when there is none yet (or ever, see `finished`)."""
    total: int


def encode_page_token(job_id: str, offset: int) -> str:
    raw = f"{job_id}:{offset}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(job_id: str, token: str) -> int:
    """The offset a token of this job's result pages stands for; 0 without one."""
    if not token:
        return 0
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        owner, _, offset = raw.rpartition(":")
        if owner != job_id or not offset.isdigit():
            raise ValueError(raw)
        return int(offset)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise InvalidArgument.for_field(
            "page_token", "is not a token from this job's results"
        ) from None


class BatchResultsReader:
    """Pages through the JSON Lines results under a store prefix.

    Each file holds some images' results, one line each (the worker's chunk size may
    change between runs, so lines are counted, never assumed); the files in name order
    are the images in input order. Line counts are cached by (key, etag, size), so a page
    far into a large job reads only the file it starts in (and those after it as needed).
    """

    def __init__(self, store: ObjectStore, *, max_cached: int = 10_000) -> None:
        self._store = store
        self._counts: OrderedDict[tuple[str, str, int], int] = OrderedDict()
        self._max_cached = max_cached

    async def page(self, root: str, *, offset: int, size: int) -> ResultsPage:
        """Up to `size` results from global line `offset` under the store prefix `root`."""
        files = [
            info
            for info in await self._store.list(root + "predictions-", recursive=False)
            if RESULTS_FILE.fullmatch(info.key[len(root) :])
        ]
        counts = [await self._line_count(info) for info in files]
        total = sum(counts)
        results: list[inference_pb2.ImageResult] = []
        start = 0
        for info, count in zip(files, counts, strict=True):
            if len(results) >= size:
                break
            end = start + count
            if end > offset:
                lines = (await self._lines(info))[max(0, offset - start) :]
                for line in lines[: size - len(results)]:
                    results.append(_parse(line, info.key))
            start = end
        following = offset + len(results)
        return ResultsPage(
            results=results, next_offset=following if following < total else None, total=total
        )

    async def _lines(self, info: ObjectInfo) -> list[bytes]:
        data = await self._store.get_bytes(info.key)
        lines = [line for line in data.split(b"\n") if line.strip()]
        self._remember(info, len(lines))
        return lines

    async def _line_count(self, info: ObjectInfo) -> int:
        cached = self._counts.get((info.key, info.etag, info.size))
        if cached is not None:
            return cached
        return len(await self._lines(info))

    def _remember(self, info: ObjectInfo, count: int) -> None:
        key = (info.key, info.etag, info.size)
        self._counts[key] = count
        self._counts.move_to_end(key)
        while len(self._counts) > self._max_cached:
            self._counts.popitem(last=False)


def _parse(line: bytes, key: str) -> inference_pb2.ImageResult:
    result = inference_pb2.ImageResult()
    try:
        json_format.Parse(line, result, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        _log.error("unreadable batch result line", key=key, error=str(exc))
        raise Internal(f"a result line of {key} is unreadable") from None
    return result
