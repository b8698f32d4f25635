"""ObjectStore against a real SeaweedFS S3 gateway: round trips, multipart, presigning, errors."""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import urllib3
from minio.error import S3Error
from visionmesh.common.embedded import SeaweedS3, free_port
from visionmesh.common.errors import InvalidArgument, NotFound, Unavailable
from visionmesh.common.storage import ObjectStore, ObjectStoreConfig

MIB = 1024 * 1024


async def test_put_get_stat_exists(object_store: ObjectStore) -> None:
    etag = await object_store.put_bytes(
        "a/hello.txt", b"hello", content_type="text/plain", metadata={"job": "j1"}
    )
    assert await object_store.get_bytes("a/hello.txt") == b"hello"
    info = await object_store.stat("a/hello.txt")
    assert info.size == 5
    assert info.etag == etag == hashlib.md5(b"hello").hexdigest()
    assert info.content_type == "text/plain"
    assert info.metadata == {"job": "j1"}
    assert await object_store.exists("a/hello.txt")
    assert not await object_store.exists("a/other.txt")


async def test_missing_key_is_not_found_everywhere(
    object_store: ObjectStore, tmp_path: Path
) -> None:
    with pytest.raises(NotFound):
        await object_store.get_bytes("missing")
    with pytest.raises(NotFound):
        await object_store.stat("missing")
    with pytest.raises(NotFound):
        await object_store.download_file("missing", tmp_path / "out")
    with pytest.raises(NotFound):
        async for _ in object_store.iter_chunks("missing"):
            pass
    assert not (tmp_path / "out").exists()


async def test_missing_bucket_is_not_found(object_store_config: ObjectStoreConfig) -> None:
    store = ObjectStore(object_store_config)
    with pytest.raises(NotFound):
        await store.put_bytes("k", b"x")


async def test_ensure_bucket_is_idempotent(object_store: ObjectStore) -> None:
    await object_store.put_bytes("k", b"kept")
    await object_store.ensure_bucket()
    assert await object_store.get_bytes("k") == b"kept"


async def test_list_and_delete_prefix(object_store: ObjectStore) -> None:
    for key in ("a/1", "a/2", "a/b/3", "ab", "b/1"):
        await object_store.put_bytes(key, key.encode())

    listed = await object_store.list("a/")
    assert [info.key for info in listed] == ["a/1", "a/2", "a/b/3"]
    assert [info.size for info in listed] == [3, 3, 5]
    assert [info.key for info in await object_store.list("a/", recursive=False)] == ["a/1", "a/2"]

    assert await object_store.delete_prefix("a/") == 3
    assert [info.key for info in await object_store.list()] == ["ab", "b/1"]
    with pytest.raises(InvalidArgument):
        await object_store.delete_prefix("")

    await object_store.delete("ab")
    await object_store.delete("ab")  # deleting twice is fine, as in S3
    assert [info.key for info in await object_store.list()] == ["b/1"]


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_put_stream_of_unknown_length_is_multipart(object_store: ObjectStore) -> None:
    data = os.urandom(11 * MIB + 123)
    etag = await object_store.put_stream(
        "big/stream.bin", _chunks(data, 256 * 1024 + 7), part_size=5 * MIB
    )
    # A multipart etag is md5-of-part-md5s with a "-<parts>" suffix: 5 + 5 + 1 MiB = 3 parts.
    assert etag.endswith("-3")
    info = await object_store.stat("big/stream.bin")
    assert info.size == len(data)
    assert hashlib.sha256(await object_store.get_bytes("big/stream.bin")).digest() == (
        hashlib.sha256(data).digest()
    )


async def test_put_stream_from_file_object(object_store: ObjectStore) -> None:
    data = os.urandom(6 * MIB)
    await object_store.put_stream("file-like.bin", io.BytesIO(data), part_size=5 * MIB)
    assert await object_store.get_bytes("file-like.bin") == data


async def test_put_stream_source_error_propagates(object_store: ObjectStore) -> None:
    async def failing() -> AsyncIterator[bytes]:
        yield b"x" * MIB
        raise ValueError("source broke")

    with pytest.raises(ValueError, match="source broke"):
        await object_store.put_stream("broken.bin", failing(), part_size=5 * MIB)
    assert not await object_store.exists("broken.bin")


async def test_put_stream_rejects_tiny_parts(object_store: ObjectStore) -> None:
    with pytest.raises(InvalidArgument):
        await object_store.put_stream("x", io.BytesIO(b"x"), part_size=MIB)


async def test_iter_chunks_streams_the_object(object_store: ObjectStore) -> None:
    data = os.urandom(3 * MIB + 5)
    await object_store.put_bytes("chunked.bin", data)
    chunks = [chunk async for chunk in object_store.iter_chunks("chunked.bin", chunk_size=MIB)]
    assert len(chunks) >= 4
    assert b"".join(chunks) == data


async def test_put_file_and_download_file(object_store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "in.bin"
    source.write_bytes(os.urandom(2 * MIB))
    await object_store.put_file("files/in.bin", source)
    target = tmp_path / "out" / "copy.bin"
    target.parent.mkdir()
    await object_store.download_file("files/in.bin", target)
    assert target.read_bytes() == source.read_bytes()


async def test_presigned_put_then_get_round_trip(object_store: ObjectStore) -> None:
    payload = os.urandom(64 * 1024)
    put_url = await object_store.presigned_put("uploads/archive.zip")
    async with httpx.AsyncClient() as client:
        put = await client.put(put_url, content=payload)
        assert put.status_code == 200, put.text
        get = await client.get(await object_store.presigned_get("uploads/archive.zip"))
        assert get.status_code == 200, get.text
        assert get.content == payload
        # A tampered signature must not be accepted, or presigning proves nothing.
        forged = await client.get(put_url.replace("X-Amz-Signature=", "X-Amz-Signature=0"))
        assert forged.status_code == 403
    assert await object_store.get_bytes("uploads/archive.zip") == payload


async def test_presigned_urls_carry_the_public_endpoint(
    object_store: ObjectStore, s3_server: SeaweedS3
) -> None:
    public = ObjectStore(
        replace(object_store.config, public_endpoint=f"http://localhost:{s3_server.port}")
    )
    await object_store.put_bytes("pub.txt", b"public bytes")
    url = await public.presigned_get("pub.txt")
    assert url.startswith(f"http://localhost:{s3_server.port}/{object_store.bucket}/pub.txt?")
    async with httpx.AsyncClient() as client:
        response = await client.get(url)
    assert response.status_code == 200, response.text
    assert response.content == b"public bytes"
    public.close()


async def test_wrong_credentials_are_rejected(object_store: ObjectStore) -> None:
    bad = ObjectStore(replace(object_store.config, secret_key="wrong"))
    with pytest.raises(S3Error, match=r"SignatureDoesNotMatch|AccessDenied"):
        await bad.get_bytes("anything")


async def test_unreachable_endpoint_is_unavailable() -> None:
    store = ObjectStore(
        ObjectStoreConfig(
            endpoint=f"http://127.0.0.1:{free_port()}",
            access_key="a",
            secret_key="b",
            bucket="nowhere",
        ),
        http_client=urllib3.PoolManager(retries=urllib3.Retry(total=0)),
    )
    with pytest.raises(Unavailable):
        await store.get_bytes("k")


async def test_endpoint_url_forms() -> None:
    https = ObjectStore(
        ObjectStoreConfig(
            endpoint="https://s3.example.com", access_key="a", secret_key="b", bucket="bkt"
        )
    )
    # Presigning is offline (the region is preset), so this needs no server.
    assert (await https.presigned_get("k")).startswith("https://s3.example.com/bkt/k?")
    with pytest.raises(InvalidArgument):
        ObjectStore(
            ObjectStoreConfig(
                endpoint="http://s3.example.com/path", access_key="a", secret_key="b", bucket="bkt"
            )
        )
    assert "secret" not in repr(
        ObjectStoreConfig(endpoint="h:1", access_key="a", secret_key="secret", bucket="x")
    )
