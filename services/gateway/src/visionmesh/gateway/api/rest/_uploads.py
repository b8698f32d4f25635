"""File uploads on REST routes: multipart/form-data or a raw file body bound into a request.

Browsers and curl send files as multipart forms (`curl -F image=@a.jpg`) or as the body
itself (`curl --data-binary @a.jpg -H 'content-type: image/jpeg'`). For a route declared
with a `FileUpload`, either becomes the same request message a JSON body would: each file
one item of a repeated message field (`images[i].data`), form fields (or, for a raw body,
query parameters) the scalar fields of an options message (`conf=0.5`, `classes=0,2`).
The request then goes through the same pipeline (auth, validation, errors) as JSON.
"""

from __future__ import annotations

import email.message
import email.utils
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from visionmesh.common.errors import FieldViolation, InvalidArgument
from visionmesh.common.limits import MAX_IMAGE_BYTES, MAX_IMAGES_PER_REQUEST
from visionmesh.gateway.api.rest._binding import _scalar_parser

__all__ = [
    "MAX_PREDICT_IMAGES",
    "MAX_PREDICT_IMAGE_BYTES",
    "PREDICT_UPLOAD",
    "FileUpload",
    "MultipartPart",
    "parse_multipart",
]

MAX_PREDICT_IMAGES = MAX_IMAGES_PER_REQUEST
"""PredictRequest.images' max_items."""
MAX_PREDICT_IMAGE_BYTES = MAX_IMAGE_BYTES
"""common.v1.Image.data's max_len."""
_PART_OVERHEAD = 16 * 1024
"""Room per file for its multipart headers and delimiters, and for the form fields."""


@dataclass(frozen=True, slots=True)
class MultipartPart:
    """One part of a multipart/form-data body."""

    name: str
    filename: str | None
    content_type: str
    data: bytes


def _malformed(description: str) -> InvalidArgument:
    return InvalidArgument(f"malformed multipart body: {description}", reason="MALFORMED_MULTIPART")


def _header_params(value: str) -> email.message.Message:
    """A header value with its parameters parsed as RFC 2045/2231 says (quoting, charsets)."""
    holder = email.message.Message()
    holder["content-disposition"] = value
    return holder


def parse_multipart(body: bytes, boundary: str, *, max_parts: int) -> list[MultipartPart]:
    """The parts of a multipart/form-data `body` (RFC 7578); InvalidArgument when malformed
    or when it has more than `max_parts` parts."""
    delimiter = b"--" + boundary.encode("latin-1")
    start = body.find(delimiter)
    if start < 0 or (start > 0 and body[start - 2 : start] != b"\r\n"):
        raise _malformed("the boundary of the content-type header is not in the body")
    position = start + len(delimiter)
    parts: list[MultipartPart] = []
    while True:
        if body.startswith(b"--", position):
            return parts
        if not body.startswith(b"\r\n", position):
            raise _malformed("a boundary line is not followed by CRLF")
        position += 2
        end = body.find(b"\r\n" + delimiter, position)
        if end < 0:
            raise _malformed("the last part is not closed by the boundary")
        if len(parts) >= max_parts:
            raise InvalidArgument(
                f"a multipart body may have at most {max_parts} parts",
                reason="TOO_MANY_PARTS",
            )
        if body.startswith(b"\r\n", position):
            head, content_start = b"", position + 2
        else:
            header_end = body.find(b"\r\n\r\n", position, end)
            if header_end < 0:
                raise _malformed("a part's headers are not ended by an empty line")
            head, content_start = body[position:header_end], header_end + 4
        parts.append(_part(head, body[content_start:end]))
        position = end + 2 + len(delimiter)


def _part(head: bytes, data: bytes) -> MultipartPart:
    headers: dict[str, str] = {}
    for line in head.decode("utf-8", errors="replace").split("\r\n"):
        name, colon, value = line.partition(":")
        if not colon:
            raise _malformed(f"header line {line!r} has no ':'")
        headers[name.strip().lower()] = value.strip()
    disposition = headers.get("content-disposition")
    if disposition is None:
        raise _malformed("a part has no content-disposition header")
    params = _header_params(disposition)
    if params.get_content_disposition() != "form-data":
        raise _malformed("a part's content-disposition is not form-data")
    param = params.get_param("name", header="content-disposition")
    name = email.utils.collapse_rfc2231_value(param) if param is not None else ""
    if not name:
        raise _malformed("a part's content-disposition has no name")
    return MultipartPart(
        name=name,
        filename=params.get_filename(),
        content_type=headers.get("content-type", ""),
        data=data,
    )


def _media_type(content_type: str) -> tuple[str, email.message.Message]:
    holder = email.message.Message()
    holder["content-type"] = content_type
    return holder.get_content_type(), holder


@dataclass(frozen=True, slots=True, kw_only=True)
class FileUpload:
    """A route that also takes files: `method` is its full gRPC name.

    Each file fills `<files_field>[i].<data_field>`; form fields and, for a raw file body,
    query parameters set the scalar fields of `options_field` by proto or JSON name, a
    repeated one from a comma list. `raw_media_prefix` is the media type a raw file body
    has ("image/"). Limits agree with the contract's: more than `max_files` files is
    INVALID_ARGUMENT naming `files_field`, a file over `max_file_bytes` naming its
    `<files_field>[i].<data_field>`; the route's body limit (`max_body_bytes`) admits the
    most files of the largest size, also as base64 in a JSON body.
    """

    method: str
    files_field: str = "images"
    data_field: str = "data"
    options_field: str = "options"
    raw_media_prefix: str = "image/"
    max_files: int = MAX_PREDICT_IMAGES
    max_file_bytes: int = MAX_PREDICT_IMAGE_BYTES

    @property
    def max_body_bytes(self) -> int:
        files = self.max_files * self.max_file_bytes
        # JSON carries the same bytes as base64: 4 characters per 3 bytes.
        return math.ceil(files * 4 / 3) + (self.max_files + 1) * _PART_OVERHEAD

    def accepts(self, content_type: str) -> bool:
        """Whether a body of this content type is a file upload (not JSON)."""
        media, _ = _media_type(content_type)
        return media == "multipart/form-data" or media.startswith(self.raw_media_prefix)

    def compile(self, request: Descriptor) -> _UploadBinder:
        files = request.fields_by_name.get(self.files_field)
        if files is None or not files.is_repeated or files.message_type is None:
            raise TypeError(f"{request.full_name}.{self.files_field} is not a repeated message")
        data = files.message_type.fields_by_name.get(self.data_field)
        if data is None or data.type != FieldDescriptor.TYPE_BYTES:
            raise TypeError(f"{files.message_type.full_name}.{self.data_field} is not bytes")
        options = request.fields_by_name.get(self.options_field)
        if options is None or options.message_type is None or options.is_repeated:
            raise TypeError(f"{request.full_name}.{self.options_field} is not a message")
        return _UploadBinder(self, options.message_type)

    def options_fields(self, request: Descriptor) -> list[FieldDescriptor]:
        """The options message's fields a form field or query parameter may set."""
        options = request.fields_by_name[self.options_field].message_type
        assert options is not None
        return [f for f in options.fields if f.message_type is None]


class _UploadBinder:
    """Binds upload bodies for one route; the path is bound by the route's RequestBinder."""

    def __init__(self, upload: FileUpload, options: Descriptor) -> None:
        self.upload = upload
        self._options: dict[str, tuple[FieldDescriptor, Any]] = {}
        for field in options.fields:
            if field.message_type is not None:
                continue
            parser = _scalar_parser(field)
            self._options[field.name] = (field, parser)
            self._options[field.json_name] = (field, parser)

    def bind(self, request: Message, body: bytes, content_type: str, query_string: bytes) -> None:
        """Sets the files and options of `request` (already holding the path values)."""
        media, header = _media_type(content_type)
        if media == "multipart/form-data":
            if query_string:
                self._set_options(request, _query_pairs(query_string))
            boundary = header.get_boundary()
            if not boundary:
                raise _malformed("the content-type header has no boundary")
            try:
                parts = parse_multipart(
                    body, boundary, max_parts=self.upload.max_files + len(self._options)
                )
            except InvalidArgument as error:
                if error.reason != "TOO_MANY_PARTS":
                    raise
                raise InvalidArgument.for_field(
                    self.upload.files_field, f"at most {self.upload.max_files} files"
                ) from None
            files = [p.data for p in parts if p.filename is not None]
            fields = [(p.name, _text(p)) for p in parts if p.filename is None]
            self._set_options(request, fields)
        else:
            files = [body]
            self._set_options(request, _query_pairs(query_string))
        self._set_files(request, files)

    def _set_files(self, request: Message, files: Sequence[bytes]) -> None:
        upload = self.upload
        if not files:
            raise InvalidArgument.for_field(
                upload.files_field, "no file in the upload: send each image as a file part"
            )
        if len(files) > upload.max_files:
            raise InvalidArgument.for_field(
                upload.files_field, f"at most {upload.max_files} files, got {len(files)}"
            )
        container = getattr(request, upload.files_field)
        violations = []
        for index, data in enumerate(files):
            if len(data) > upload.max_file_bytes:
                violations.append(
                    FieldViolation(
                        field=f"{upload.files_field}[{index}].{upload.data_field}",
                        description=f"{len(data)} bytes; at most {upload.max_file_bytes}",
                        reason="TOO_LARGE",
                    )
                )
            setattr(container.add(), upload.data_field, data)
        if violations:
            raise InvalidArgument(
                "; ".join(f"{v.field}: {v.description}" for v in violations),
                field_violations=violations,
            )

    def _set_options(self, request: Message, pairs: Sequence[tuple[str, str]]) -> None:
        options = getattr(request, self.upload.options_field)
        unknown: list[str] = []
        seen: set[str] = set()
        for name, text in pairs:
            known = self._options.get(name)
            if known is None:
                unknown.append(name)
                continue
            field, parse = known
            path = f"{self.upload.options_field}.{field.name}"
            if field.name in seen and not field.is_repeated:
                raise InvalidArgument.for_field(path, "given more than once but is not repeated")
            seen.add(field.name)
            values = (
                [v.strip() for v in text.split(",") if v.strip()] if field.is_repeated else [text]
            )
            for value in values:
                try:
                    parsed = parse(value.strip())
                except ValueError as exc:
                    raise InvalidArgument.for_field(path, str(exc)) from None
                if field.is_repeated:
                    getattr(options, field.name).append(parsed)
                else:
                    setattr(options, field.name, parsed)
        if unknown:
            raise InvalidArgument(
                f"unknown form field(s): {', '.join(unknown)}; files need a filename",
                field_violations=[
                    FieldViolation(field=n, description="unknown field", reason="UNKNOWN")
                    for n in unknown
                ],
                reason="UNKNOWN_FIELD",
            )


def _query_pairs(query_string: bytes) -> list[tuple[str, str]]:
    return parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)


def _text(part: MultipartPart) -> str:
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument.for_field(part.name, "not valid UTF-8 text") from None


def document_upload(operation: dict[str, Any], upload: FileUpload, request: Descriptor) -> None:
    """Adds the multipart and raw-file alternatives to an OpenAPI operation's request body."""
    properties: dict[str, Any] = {
        upload.files_field: {
            "type": "array",
            "items": {"type": "string", "format": "binary"},
            "maxItems": upload.max_files,
            "description": f"One file part each (any part name, with a filename), at most "
            f"{upload.max_file_bytes} bytes.",
        }
    }
    for field in upload.options_fields(request):
        description = f"Sets {upload.options_field}.{field.name}"
        if field.is_repeated:
            description += " (a comma-separated list)"
        properties[field.name] = {"type": "string", "description": description}
    body = operation.setdefault("requestBody", {"required": False, "content": {}})
    body["content"]["multipart/form-data"] = {
        "schema": {"type": "object", "properties": properties, "required": [upload.files_field]}
    }
    # A media type object has no description of its own (OpenAPI 3.1); the body's says it.
    body["content"][f"{upload.raw_media_prefix}*"] = {
        "schema": {"type": "string", "format": "binary"}
    }
    body["description"] = (
        f"JSON, or files as multipart/form-data, or one image as the body with "
        f"{upload.options_field} as query parameters."
    )
    parameters = operation.setdefault("parameters", [])
    for field in upload.options_fields(request):
        parameters.append(
            {
                "name": field.name,
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": f"With a raw {upload.raw_media_prefix}* body: sets "
                f"{upload.options_field}.{field.name}",
            }
        )


PREDICT_UPLOAD = FileUpload(method="/visionmesh.inference.v1.InferenceService/Predict")
"""Predict takes images as files (multipart) or as the raw body."""
