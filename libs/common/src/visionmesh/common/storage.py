"""An async object store over the S3 API (MinIO in production, SeaweedFS embedded)."""

from __future__ import annotations

import asyncio
import builtins
import io
from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, ParamSpec, Self, TypeVar, cast
from urllib.parse import urlsplit

import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import S3Error
from visionmesh.common.errors import InvalidArgument, NotFound, Unavailable
from visionmesh.common.logging import get_logger

__all__ = [
    "DEFAULT_PART_SIZE",
    "ObjectInfo",
    "ObjectStore",
    "ObjectStoreConfig",
]

DEFAULT_PART_SIZE = 16 * 1024 * 1024
"""Multipart part size for uploads of unknown length (S3 requires >= 5 MiB except the last)."""

_MIN_PART_SIZE = 5 * 1024 * 1024
_DEFAULT_CHUNK = 1024 * 1024
_DEFAULT_CONTENT_TYPE = "application/octet-stream"
_NOT_FOUND_CODES = frozenset({"NoSuchKey", "NoSuchObject", "NoSuchBucket", "ResourceNotFound"})

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True, kw_only=True)
class ObjectStoreConfig:
    """Where the bucket lives. `endpoint` is `host:port` or a URL (`https://` implies secure).

    `public_endpoint` is the address presigned URLs carry, for when this service reaches S3
    at an internal address (a compose network name) that outside clients cannot resolve.
    """

    endpoint: str
    access_key: str
    secret_key: str = field(repr=False)
    bucket: str
    secure: bool = False
    region: str = "us-east-1"
    public_endpoint: str | None = None


@dataclass(frozen=True, kw_only=True)
class ObjectInfo:
    """What a HEAD or a listing tells about one object."""

    key: str
    size: int
    etag: str
    content_type: str | None = None
    last_modified: datetime | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


def _split_endpoint(endpoint: str, *, secure: bool) -> tuple[str, bool]:
    if "://" not in endpoint:
        return endpoint.rstrip("/"), secure
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidArgument.for_field("endpoint", f"not an http(s) URL or host:port: {endpoint}")
    if parts.path not in ("", "/"):
        raise InvalidArgument.for_field("endpoint", f"must not carry a path: {endpoint}")
    return parts.netloc, parts.scheme == "https"


class _AsyncIterReader:
    """A blocking `read(n)` over an async iterator, for minio running in a worker thread."""

    def __init__(self, source: AsyncIterable[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._iterator = aiter(source)
        self._loop = loop
        self._buffer = bytearray()
        self._exhausted = False
        self._aborted = False

    def abort(self) -> None:
        """Makes the next read fail, so minio aborts the multipart upload of a cancelled caller."""
        self._aborted = True

    def _pull(self) -> bytes | None:
        if self._aborted:
            raise OSError("upload cancelled")
        future = asyncio.run_coroutine_threadsafe(_next_chunk(self._iterator), self._loop)
        return future.result()

    def read(self, size: int = -1) -> bytes:
        want = size if size >= 0 else None
        while not self._exhausted and (want is None or len(self._buffer) < want):
            chunk = self._pull()
            if chunk is None:
                self._exhausted = True
            else:
                self._buffer.extend(chunk)
        if want is None:
            data, self._buffer = bytes(self._buffer), bytearray()
        else:
            data, self._buffer = bytes(self._buffer[:want]), self._buffer[want:]
        return data


async def _next_chunk(iterator: AsyncIterator[bytes]) -> bytes | None:
    try:
        return await anext(iterator)
    except StopAsyncIteration:
        return None


class ObjectStore:
    """One bucket behind an async interface; blocking minio calls run in worker threads.

    Keys are plain strings (`datasets/<id>/archive.zip`); a missing object raises `NotFound`,
    an unreachable endpoint `Unavailable`.
    """

    def __init__(self, config: ObjectStoreConfig, *, http_client: Any | None = None) -> None:
        self.config = config
        self.bucket = config.bucket
        endpoint, secure = _split_endpoint(config.endpoint, secure=config.secure)
        # The region is fixed up front so minio never sends a GetBucketLocation request,
        # which also lets the presigning client below sign without any network access.
        self._client = Minio(
            endpoint,
            access_key=config.access_key,
            secret_key=config.secret_key,
            secure=secure,
            region=config.region,
            http_client=http_client,
        )
        if config.public_endpoint is None:
            self._presigner = self._client
        else:
            public, public_secure = _split_endpoint(config.public_endpoint, secure=secure)
            self._presigner = Minio(
                public,
                access_key=config.access_key,
                secret_key=config.secret_key,
                secure=public_secure,
                region=config.region,
            )
        self._log = get_logger(__name__).bind(bucket=self.bucket, endpoint=endpoint)

    async def _call(
        self, key: str | None, fn: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
    ) -> _T:
        try:
            return await asyncio.to_thread(fn, *args, **kwargs)
        except S3Error as exc:
            if exc.code in _NOT_FOUND_CODES:
                if exc.code == "NoSuchBucket":
                    raise NotFound(resource_type="bucket", resource_id=self.bucket) from exc
                raise NotFound(resource_type="object", resource_id=key or "") from exc
            raise
        except (urllib3.exceptions.HTTPError, ConnectionError) as exc:
            raise Unavailable(f"object store {self.config.endpoint} unreachable: {exc}") from exc

    async def ensure_bucket(self) -> None:
        """Creates the bucket unless it exists (safe to call from several processes at once)."""
        if await self._call(None, self._client.bucket_exists, self.bucket):
            return
        try:
            await self._call(None, self._client.make_bucket, self.bucket)
        except S3Error as exc:
            if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    async def put_bytes(
        self,
        key: str,
        data: bytes,
        *,
        content_type: str = _DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
    ) -> str:
        """Stores `data` under `key`; returns the etag."""
        result = await self._call(
            key,
            self._client.put_object,
            self.bucket,
            key,
            io.BytesIO(data),
            len(data),
            content_type=content_type,
            metadata=dict(metadata) if metadata else None,
        )
        return result.etag or ""

    async def put_file(
        self,
        key: str,
        path: str | Path,
        *,
        content_type: str = _DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
        part_size: int = 0,
    ) -> str:
        """Uploads a local file (multipart when large); returns the etag."""
        result = await self._call(
            key,
            self._client.fput_object,
            self.bucket,
            key,
            str(path),
            content_type=content_type,
            metadata=dict(metadata) if metadata else None,
            part_size=part_size,
        )
        return result.etag or ""

    async def put_stream(
        self,
        key: str,
        source: AsyncIterable[bytes] | IO[bytes],
        *,
        length: int | None = None,
        content_type: str = _DEFAULT_CONTENT_TYPE,
        metadata: Mapping[str, str] | None = None,
        part_size: int = DEFAULT_PART_SIZE,
    ) -> str:
        """Uploads from an async byte iterator or a binary file object; returns the etag.

        With `length=None` the upload is multipart in `part_size` pieces, so at most one
        part is held in memory whatever the object's size.
        """
        if part_size < _MIN_PART_SIZE:
            raise InvalidArgument.for_field("part_size", f"must be >= {_MIN_PART_SIZE} bytes")
        bridge: _AsyncIterReader | None = None
        if isinstance(source, AsyncIterable):
            bridge = _AsyncIterReader(source, asyncio.get_running_loop())
        reader = cast(BinaryIO, bridge if bridge is not None else source)
        try:
            result = await self._call(
                key,
                self._client.put_object,
                self.bucket,
                key,
                reader,
                length if length is not None else -1,
                content_type=content_type,
                metadata=dict(metadata) if metadata else None,
                part_size=part_size,
            )
        except asyncio.CancelledError:
            # The worker thread outlives a cancelled await; stop it pulling from the source.
            if bridge is not None:
                bridge.abort()
            raise
        return result.etag or ""

    async def get_bytes(self, key: str) -> bytes:
        """The whole object in memory; use `iter_chunks` or `download_file` for big ones."""

        def read() -> bytes:
            response = self._client.get_object(self.bucket, key)
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

        return await self._call(key, read)

    async def download_file(self, key: str, path: str | Path) -> None:
        """Writes the object to `path` (via a temporary file, so `path` is never half-written)."""
        await self._call(key, self._client.fget_object, self.bucket, key, str(path))

    async def iter_chunks(
        self, key: str, *, chunk_size: int = _DEFAULT_CHUNK
    ) -> AsyncIterator[bytes]:
        """Streams the object; raises `NotFound` on the first iteration if it is missing."""
        response = await self._call(key, self._client.get_object, self.bucket, key)
        try:
            while True:
                chunk = await self._call(key, response.read, chunk_size)
                if not chunk:
                    return
                yield chunk
        finally:
            response.close()
            response.release_conn()

    async def stat(self, key: str) -> ObjectInfo:
        """Size, etag, content type and user metadata of `key`; `NotFound` if missing."""
        result = await self._call(key, self._client.stat_object, self.bucket, key)
        # S3 user metadata keys are case-insensitive; lower-case them so lookups are stable.
        user_metadata = {
            name[len("x-amz-meta-") :].lower(): value
            for name, value in (result.metadata or {}).items()
            if name.lower().startswith("x-amz-meta-")
        }
        return ObjectInfo(
            key=key,
            size=result.size or 0,
            etag=result.etag or "",
            content_type=result.content_type,
            last_modified=result.last_modified,
            metadata=user_metadata,
        )

    async def exists(self, key: str) -> bool:
        try:
            await self.stat(key)
        except NotFound:
            return False
        return True

    async def list(self, prefix: str = "", *, recursive: bool = True) -> builtins.list[ObjectInfo]:
        """Objects under `prefix`, sorted by key (non-recursive listings omit "directories")."""

        def collect() -> builtins.list[ObjectInfo]:
            return [
                ObjectInfo(
                    key=obj.object_name or "",
                    size=obj.size or 0,
                    etag=(obj.etag or "").strip('"'),
                    last_modified=obj.last_modified,
                )
                for obj in self._client.list_objects(
                    self.bucket, prefix=prefix, recursive=recursive
                )
                if not obj.is_dir
            ]

        return sorted(await self._call(None, collect), key=lambda info: info.key)

    async def delete(self, key: str) -> None:
        """Removes `key`; deleting a missing key is not an error (S3 semantics)."""
        await self._call(key, self._client.remove_object, self.bucket, key)

    async def delete_prefix(self, prefix: str) -> int:
        """Removes every object under `prefix`; returns how many. An empty prefix is refused."""
        if not prefix:
            raise InvalidArgument.for_field("prefix", "must not be empty (would empty the bucket)")

        def remove_all() -> int:
            names = [
                obj.object_name
                for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if obj.object_name and not obj.is_dir
            ]
            # remove_objects is lazy: the requests are only sent while its result is iterated.
            errors = builtins.list(
                self._client.remove_objects(self.bucket, [DeleteObject(name) for name in names])
            )
            if errors:
                raise RuntimeError(f"failed to delete {len(errors)} objects, first: {errors[0]}")
            return len(names)

        return await self._call(None, remove_all)

    async def presigned_get(self, key: str, *, expires: timedelta = timedelta(hours=1)) -> str:
        """A URL anyone can GET the object from until `expires` passes (host: public endpoint)."""
        # Signing is local computation (the region is preset), so no worker thread is needed.
        return self._presigner.presigned_get_object(self.bucket, key, expires=expires)

    async def presigned_put(self, key: str, *, expires: timedelta = timedelta(hours=1)) -> str:
        """A URL anyone can PUT the object's bytes to until `expires` passes."""
        return self._presigner.presigned_put_object(self.bucket, key, expires=expires)

    async def remove_bucket(self) -> None:
        """Deletes every object and then the bucket itself (for tests and teardown)."""

        def remove() -> None:
            names = [
                obj.object_name
                for obj in self._client.list_objects(self.bucket, recursive=True)
                if obj.object_name and not obj.is_dir
            ]
            builtins.list(
                self._client.remove_objects(self.bucket, [DeleteObject(name) for name in names])
            )
            self._client.remove_bucket(self.bucket)

        await self._call(None, remove)

    def close(self) -> None:
        """Closes pooled HTTP connections."""
        for client in {
            id(self._client): self._client,
            id(self._presigner): self._presigner,
        }.values():
            client._http.clear()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
