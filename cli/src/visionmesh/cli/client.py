"""A small synchronous client for the gateway's REST API, with typed errors."""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

import httpx

__all__ = [
    "ApiError",
    "ClientError",
    "FieldViolation",
    "GatewayClient",
    "IntegrityError",
    "SseEvent",
    "TransportError",
    "iter_sse",
]

JsonObject = dict[str, Any]
ProgressCallback = Callable[[int], None]

_CHUNK: Final = 1024 * 1024
# Statuses worth retrying for idempotent calls: the gateway (or a proxy) is briefly away.
_RETRY_HTTP: Final = frozenset({502, 503, 504})
# The gateway sends a heartbeat comment every 15 s; much longer silence means a dead stream.
_STREAM_READ_TIMEOUT: Final = 60.0


def _user_agent() -> str:
    try:
        version = metadata.version("visionmesh-cli")
    except metadata.PackageNotFoundError:
        version = "dev"
    return f"visionmesh-cli/{version}"


class ClientError(Exception):
    """Anything the CLI reports as a failed call."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field (or, for dataset archives, one bad file) named by the server."""

    field: str
    description: str


class ApiError(ClientError):
    """The gateway (or the object store behind a presigned URL) answered with an error.

    `status` is the canonical status name (`INVALID_ARGUMENT`, `NOT_FOUND`, ...), or the
    HTTP reason phrase when the body was not a gateway error.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int,
        status: str,
        reason: str = "",
        field_violations: Iterable[FieldViolation] = (),
        request_id: str = "",
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.status = status
        self.reason = reason
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.status}: {self.message}"

    @classmethod
    def from_json(
        cls, body: Mapping[str, Any], *, http_status: int | None = None, request_id: str = ""
    ) -> ApiError:
        """From the gateway's `{code, status, message, details}` error body."""
        violations: list[FieldViolation] = []
        reason = ""
        for detail in body.get("details") or ():
            if not isinstance(detail, Mapping):
                continue
            for violation in detail.get("fieldViolations") or ():
                violations.append(
                    FieldViolation(
                        field=str(violation.get("field", "")),
                        description=str(violation.get("description", "")),
                    )
                )
            # FAILED_PRECONDITION names the fields a deployment cannot honour this way.
            if str(detail.get("@type", "")).endswith("google.rpc.PreconditionFailure"):
                for violation in detail.get("violations") or ():
                    violations.append(
                        FieldViolation(
                            field=str(violation.get("subject", "")),
                            description=str(violation.get("description", "")),
                        )
                    )
            if str(detail.get("@type", "")).endswith("google.rpc.ErrorInfo") and not reason:
                reason = str(detail.get("reason", ""))
        code = body.get("code")
        return cls(
            str(body.get("message") or "request failed"),
            http_status=http_status or (int(code) if isinstance(code, int) else 500),
            status=str(body.get("status") or "UNKNOWN"),
            reason=reason,
            field_violations=violations,
            request_id=request_id,
        )

    @classmethod
    def from_response(cls, response: httpx.Response) -> ApiError:
        request_id = response.headers.get("x-request-id", "")
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, Mapping) and "message" in body:
            return cls.from_json(body, http_status=response.status_code, request_id=request_id)
        text = response.text.strip()
        # S3-style XML errors (from presigned URLs): <Code>SignatureDoesNotMatch</Code>...
        code = re.search(r"<Code>(.*?)</Code>", text)
        message = re.search(r"<Message>(.*?)</Message>", text, flags=re.S)
        return cls(
            (message.group(1) if message else text[:300]) or response.reason_phrase,
            http_status=response.status_code,
            status=code.group(1) if code else (response.reason_phrase or "HTTP_ERROR").upper(),
            request_id=request_id,
        )


class TransportError(ClientError):
    """The gateway could not be reached, or the connection broke."""


class IntegrityError(ClientError):
    """A downloaded file does not match the checksum the server recorded."""


@dataclass(frozen=True, slots=True)
class SseEvent:
    """One Server-Sent Event: its `id:`, `event:` (default "message") and joined `data:`."""

    id: str | None
    event: str
    data: str


def iter_sse(lines: Iterable[str]) -> Iterator[SseEvent]:
    """Parses an event stream (per the HTML spec) from its lines; comments are skipped."""
    event_id: str | None = None
    event = ""
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data or event:
                yield SseEvent(id=event_id, event=event or "message", data="\n".join(data))
            event_id, event, data = None, "", []
            continue
        if line.startswith(":"):
            continue  # heartbeat / comment
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            event_id = value
        # "retry" and unknown fields are ignored.


class _Retry(Exception):
    """Internal: a stream attempt failed in a way worth reconnecting for."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class GatewayClient:
    """Calls the gateway's REST API; every method returns the decoded JSON response.

    Errors become `ApiError` (the server answered) or `TransportError` (it could not be
    reached). Idempotent GETs are retried briefly on connection errors and 502/503/504.
    Presigned object-store URLs are called without the gateway's Authorization header.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        retries: int = 2,
        backoff_seconds: float = 0.5,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.retries = retries
        self.backoff_seconds = backoff_seconds
        headers = {"user-agent": _user_agent(), "accept": "application/json"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        # Presigned URLs carry their own signature; a Bearer header would break it.
        self._blob = httpx.Client(
            headers={"user-agent": _user_agent()},
            timeout=httpx.Timeout(timeout, read=300.0, write=300.0),
            transport=transport,
            follow_redirects=True,
        )

    def __enter__(self) -> GatewayClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        self._blob.close()

    # --- plumbing ----------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, Any] | None = None,
        timeout: float | None = None,
    ) -> JsonObject:
        attempts = 1 + (self.retries if method == "GET" else 0)
        clean = {k: v for k, v in (params or {}).items() if v not in (None, "")}
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http.request(
                    method,
                    path,
                    json=json_body,
                    params=clean or None,
                    timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.TransportError as exc:
                if last:
                    raise self._unreachable(exc) from exc
            else:
                if response.status_code in _RETRY_HTTP and not last:
                    pass
                elif response.is_success:
                    return _decode(response)
                else:
                    raise ApiError.from_response(response)
            time.sleep(self.backoff_seconds * (2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _unreachable(self, exc: httpx.TransportError) -> TransportError:
        return TransportError(f"cannot reach the gateway at {self.base_url}: {_describe(exc)}")

    def paginate(
        self,
        path: str,
        key: str,
        *,
        params: Mapping[str, Any] | None = None,
        limit: int | None = None,
    ) -> Iterator[JsonObject]:
        """Items of a paged list (`{<key>: [...], nextPageToken}`), at most `limit` of them."""
        token = ""
        seen = 0
        while True:
            page_size = min(limit - seen, 1000) if limit else None
            page = self._request(
                "GET", path, params={**(params or {}), "pageSize": page_size, "pageToken": token}
            )
            for item in page.get(key) or ():
                yield item
                seen += 1
                if limit and seen >= limit:
                    return
            token = str(page.get("nextPageToken") or "")
            if not token:
                return

    # --- auth ----------------------------------------------------------------------------------

    def signup(self, username: str, password: str) -> JsonObject:
        return self._request(
            "POST", "/v1/auth/signup", json_body={"username": username, "password": password}
        )

    def login(self, username: str, password: str) -> JsonObject:
        return self._request(
            "POST", "/v1/auth/login", json_body={"username": username, "password": password}
        )

    def me(self) -> JsonObject:
        return self._request("GET", "/v1/me")

    def create_api_key(self, name: str, *, ttl_days: int = 0) -> JsonObject:
        return self._request("POST", "/v1/apikeys", json_body={"name": name, "ttlDays": ttl_days})

    # --- datasets ------------------------------------------------------------------------------

    def create_dataset(self, name: str, description: str = "") -> JsonObject:
        return self._request(
            "POST", "/v1/datasets", json_body={"name": name, "description": description}
        )

    def upload(
        self,
        url: str,
        path: Path,
        *,
        on_progress: ProgressCallback | None = None,
        content_type: str = "application/zip",
    ) -> None:
        """PUTs the file to a presigned URL, streaming it in chunks."""
        size = path.stat().st_size

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as handle:
                while chunk := handle.read(_CHUNK):
                    yield chunk
                    if on_progress is not None:
                        on_progress(len(chunk))

        # An explicit length: S3 refuses chunked transfer encoding on a plain PUT.
        headers = {"content-length": str(size), "content-type": content_type}
        try:
            response = self._blob.put(url, content=chunks(), headers=headers)
        except httpx.TransportError as exc:
            raise TransportError(f"upload failed: {_describe(exc)}") from exc
        if not response.is_success:
            raise ApiError.from_response(response)

    def finalize_dataset(self, dataset_id: str) -> JsonObject:
        # Validation reads the whole archive server-side: allow it time.
        return self._request(
            "POST", f"/v1/datasets/{_seg(dataset_id)}:finalize", json_body={}, timeout=600.0
        )

    def list_datasets(self, *, limit: int | None = None) -> Iterator[JsonObject]:
        return self.paginate("/v1/datasets", "datasets", limit=limit)

    def get_dataset(self, dataset_id: str) -> JsonObject:
        return self._request("GET", f"/v1/datasets/{_seg(dataset_id)}")

    def get_snapshot(self, snapshot_id: str) -> JsonObject:
        return self._request("GET", f"/v1/snapshots/{_seg(snapshot_id)}")

    def create_snapshot(self, dataset_id: str, description: str = "") -> JsonObject:
        return self._request(
            "POST",
            f"/v1/datasets/{_seg(dataset_id)}/snapshots",
            json_body={"description": description},
        )

    # --- jobs ----------------------------------------------------------------------------------

    def create_training_job(self, body: Mapping[str, Any]) -> JsonObject:
        return self._request("POST", "/v1/training/jobs", json_body=dict(body))

    def create_export_job(self, body: Mapping[str, Any]) -> JsonObject:
        return self._request("POST", "/v1/export/jobs", json_body=dict(body))

    def list_jobs(
        self, *, kind: str = "", state: str = "", limit: int | None = None
    ) -> Iterator[JsonObject]:
        return self.paginate("/v1/jobs", "jobs", params={"kind": kind, "state": state}, limit=limit)

    def get_job(self, job_id: str) -> JsonObject:
        return self._request("GET", f"/v1/jobs/{_seg(job_id)}")

    def cancel_job(self, job_id: str) -> JsonObject:
        return self._request("POST", f"/v1/jobs/{_seg(job_id)}:cancel", json_body={})

    def job_metrics(self, job_id: str, *, name: str = "") -> JsonObject:
        return self._request("GET", f"/v1/jobs/{_seg(job_id)}/metrics", params={"name": name})

    def job_artifacts(self, job_id: str) -> JsonObject:
        return self._request("GET", f"/v1/jobs/{_seg(job_id)}/artifacts")

    def artifact_download_url(self, artifact_id: str) -> JsonObject:
        return self._request("GET", f"/v1/artifacts/{_seg(artifact_id)}:download")

    def watch_job(
        self,
        job_id: str,
        *,
        after_sequence: int = 0,
        max_reconnects: int = 10,
        on_reconnect: Callable[[int, str], None] | None = None,
    ) -> Iterator[JsonObject]:
        """Yields the job's WatchJobResponse events until the stream's `event: end`.

        A dropped stream (network error, gateway restart, 502/503/504) is resumed with
        `Last-Event-ID` set to the last sequence seen, so no event is lost or repeated;
        `on_reconnect(attempt, why)` is called before each retry. Gives up with
        `TransportError` after `max_reconnects` attempts in a row without an event.
        """
        last = after_sequence
        failures = 0
        path = f"/v1/jobs/{_seg(job_id)}/events"
        timeout = httpx.Timeout(10.0, read=_STREAM_READ_TIMEOUT)
        while True:
            headers = {"accept": "text/event-stream"}
            if last:
                headers["last-event-id"] = str(last)
            try:
                with self._http.stream("GET", path, headers=headers, timeout=timeout) as response:
                    if response.status_code in _RETRY_HTTP:
                        raise _Retry(f"HTTP {response.status_code}")
                    if not response.is_success:
                        response.read()
                        raise ApiError.from_response(response)
                    for event in iter_sse(response.iter_lines()):
                        if event.event == "end":
                            return
                        if event.event == "error":
                            error = ApiError.from_json(json.loads(event.data or "{}"))
                            if error.status == "UNAVAILABLE":
                                raise _Retry(str(error))
                            raise error
                        if event.event != "message" or not event.data:
                            continue
                        payload = json.loads(event.data)
                        sequence = int(payload.get("sequence") or event.id or 0)
                        if sequence and sequence <= last:
                            continue  # replayed after a reconnect
                        last = max(last, sequence)
                        failures = 0
                        yield payload
                raise _Retry("the stream ended before the job finished")
            except _Retry as retry:
                why = retry.why
            except httpx.TransportError as exc:
                why = _describe(exc)
            failures += 1
            if failures > max_reconnects:
                raise TransportError(
                    f"lost the event stream of job {job_id} ({why}); gave up after "
                    f"{max_reconnects} reconnects"
                )
            if on_reconnect is not None:
                on_reconnect(failures, why)
            time.sleep(min(self.backoff_seconds * (2 ** (failures - 1)), 10.0))

    # --- artifacts -----------------------------------------------------------------------------

    def download(
        self,
        url: str,
        dest: Path,
        *,
        expected_sha256: str = "",
        on_start: Callable[[int | None], None] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> str:
        """Streams a presigned URL into `dest`; returns the content's hex SHA-256.

        The file is written next to `dest` and renamed into place only once complete and,
        when `expected_sha256` is given, verified; a mismatch raises IntegrityError.
        """
        partial = dest.with_name(f"{dest.name}.part")
        digest = hashlib.sha256()
        try:
            with self._blob.stream("GET", url) as response:
                if not response.is_success:
                    response.read()
                    raise ApiError.from_response(response)
                length = response.headers.get("content-length")
                if on_start is not None:
                    on_start(int(length) if length and length.isdigit() else None)
                with partial.open("wb") as handle:
                    for chunk in response.iter_bytes(_CHUNK):
                        handle.write(chunk)
                        digest.update(chunk)
                        if on_progress is not None:
                            on_progress(len(chunk))
        except httpx.TransportError as exc:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise TransportError(f"download failed: {_describe(exc)}") from exc
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                partial.unlink()
            raise
        actual = digest.hexdigest()
        if expected_sha256 and actual.lower() != expected_sha256.lower():
            partial.unlink()
            raise IntegrityError(
                f"checksum mismatch for {dest.name}: expected sha256 {expected_sha256}, "
                f"got {actual}; the file was not kept"
            )
        partial.replace(dest)
        return actual

    # --- models --------------------------------------------------------------------------------

    def list_models(self, *, limit: int | None = None) -> Iterator[JsonObject]:
        return self.paginate("/v1/models", "models", limit=limit)

    def get_model(self, model_id: str) -> JsonObject:
        return self._request("GET", f"/v1/models/{_seg(model_id)}")

    def get_export(self, export_id: str) -> JsonObject:
        return self._request("GET", f"/v1/exports/{_seg(export_id)}")

    def export_download_url(self, export_id: str, *, file: str = "") -> JsonObject:
        """A presigned URL of the export's package, or of one `file` of it."""
        return self._request(
            "GET", f"/v1/exports/{_seg(export_id)}:download", params={"file": file}
        )

    # --- inference -------------------------------------------------------------------------------

    def load_model(self, body: Mapping[str, Any]) -> JsonObject:
        return self._request("POST", "/v1/deployments", json_body=dict(body))

    def list_deployments(self, *, limit: int | None = None) -> Iterator[JsonObject]:
        return self.paginate("/v1/deployments", "deployments", limit=limit)

    def get_deployment(self, name: str) -> JsonObject:
        return self._request("GET", f"/v1/deployments/{_seg(name)}")

    def unload_model(self, name: str) -> JsonObject:
        return self._request("DELETE", f"/v1/deployments/{_seg(name)}")

    def predict(
        self,
        deployment: str,
        files: Sequence[tuple[str, bytes, str]],
        *,
        options: Mapping[str, str] | None = None,
        timeout: float = 120.0,
    ) -> JsonObject:
        """Runs a deployment on image files, sent as multipart/form-data: `files` are
        (file name, content, content type); `options` the form fields (conf, classes...)."""
        try:
            response = self._http.post(
                f"/v1/deployments/{_seg(deployment)}:predict",
                files=[("image", (name, data, kind)) for name, data, kind in files],
                data=dict(options or {}),
                timeout=timeout,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from exc
        if not response.is_success:
            raise ApiError.from_response(response)
        return _decode(response)

    def create_batch_input_upload(
        self, file_names: Sequence[str] = (), *, zip_file: bool = False
    ) -> JsonObject:
        return self._request(
            "POST",
            "/v1/batch-inference/uploads",
            json_body={"fileNames": list(file_names), "zip": zip_file},
        )

    def create_batch_inference_job(self, spec: Mapping[str, Any]) -> JsonObject:
        return self._request("POST", "/v1/batch-inference/jobs", json_body={"spec": dict(spec)})

    def batch_results(self, job_id: str, *, page_size: int = 1000) -> Iterator[JsonObject]:
        """A batch job's results in input order, as far as it has written them."""
        path = f"/v1/batch-inference/jobs/{_seg(job_id)}/results"
        token = ""
        while True:
            page = self._request("GET", path, params={"pageSize": page_size, "pageToken": token})
            results = page.get("results") or []
            yield from results
            token = str(page.get("nextPageToken") or "")
            # A running job's last page still has a token (more may come): stop at it.
            if not token or not results:
                return

    # --- embedding ---------------------------------------------------------------------------

    def list_collections(self, *, limit: int | None = None) -> Iterator[JsonObject]:
        return self.paginate("/v1/collections", "collections", limit=limit)

    def get_collection(self, name: str) -> JsonObject:
        return self._request("GET", f"/v1/collections/{_seg(name)}")

    def create_collection(self, body: Mapping[str, Any]) -> JsonObject:
        return self._request("POST", "/v1/collections", json_body=dict(body))

    def delete_collection(self, name: str) -> JsonObject:
        return self._request("DELETE", f"/v1/collections/{_seg(name)}")

    def embed(self, body: Mapping[str, Any], *, timeout: float = 120.0) -> JsonObject:
        return self._request("POST", "/v1/embedding:embed", json_body=dict(body), timeout=timeout)

    def search(
        self, collection: str, body: Mapping[str, Any], *, timeout: float = 120.0
    ) -> JsonObject:
        return self._request(
            "POST",
            f"/v1/collections/{_seg(collection)}:search",
            json_body=dict(body),
            timeout=timeout,
        )

    def match(
        self, collection: str, body: Mapping[str, Any], *, timeout: float = 120.0
    ) -> JsonObject:
        return self._request(
            "POST",
            f"/v1/collections/{_seg(collection)}:match",
            json_body=dict(body),
            timeout=timeout,
        )

    def create_embedding_job(self, spec: Mapping[str, Any]) -> JsonObject:
        return self._request("POST", "/v1/embedding/jobs", json_body={"spec": dict(spec)})


def _seg(value: str) -> str:
    """A path segment: ids never contain "/" or ":", but a typo must not change the route."""
    return quote(value, safe="")


def _decode(response: httpx.Response) -> JsonObject:
    if not response.content:
        return {}
    try:
        body = response.json()
    except ValueError as exc:
        raise ApiError(
            f"the gateway answered with non-JSON content ({response.headers.get('content-type')})",
            http_status=response.status_code,
            status="BAD_RESPONSE",
        ) from exc
    return body if isinstance(body, dict) else {"value": body}


def _describe(exc: httpx.TransportError) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
