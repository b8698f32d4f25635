"""The compiled rule checks agree with protovalidate on every message type of the API."""

from __future__ import annotations

import importlib
import pkgutil
import random

import protovalidate
import pytest
import visionmesh.api as api
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from visionmesh.common.errors import InvalidArgument, field_path, validate_message
from visionmesh.common.validation import collect_violations, uses_fallback

_STRINGS = [
    "",
    "a",
    "ab",
    "abc",
    "x" * 70,
    "y" * 300,
    "ultralytics",
    "detect",
    "onnx",
    "yolo11n.yaml",
    "cpu",
    "cuda:0",
    "A b!",
    "user_name-1",
    "cosine",
    "rgb",
]
_INTS = [-5, -1, 0, 1, 2, 3, 31, 32, 64, 100, 1000, 4096, 5000, 2**20]
_FLOATS = [-1.0, 0.0, 0.001, 0.5, 1.0, 2.0, 10.0, 11.0, 1e6]


def _message_types() -> list[Descriptor]:
    found: dict[str, Descriptor] = {}
    for module_info in pkgutil.walk_packages(api.__path__, "visionmesh.api."):
        if module_info.name.endswith("_pb2"):
            module = importlib.import_module(module_info.name)
            for descriptor in module.DESCRIPTOR.message_types_by_name.values():
                found[descriptor.full_name] = descriptor
    return sorted(found.values(), key=lambda d: d.full_name)


def _scalar(field: FieldDescriptor, rng: random.Random, strings: list[str]) -> object:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return rng.choice(strings)
    if t == FieldDescriptor.TYPE_BYTES:
        return rng.choice([b"", b"x", b"\xff" * 10])
    if t == FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == FieldDescriptor.TYPE_ENUM:
        numbers = [v.number for v in field.enum_type.values]
        return rng.choice([*numbers, 99])
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return rng.choice(_FLOATS)
    if t in (
        FieldDescriptor.TYPE_UINT32,
        FieldDescriptor.TYPE_UINT64,
        FieldDescriptor.TYPE_FIXED32,
        FieldDescriptor.TYPE_FIXED64,
    ):
        return abs(rng.choice(_INTS))
    return rng.choice(_INTS)


def _fill(message: Message, rng: random.Random, depth: int, strings: list[str]) -> None:
    chosen_oneof: dict[str, str | None] = {}
    for oneof in message.DESCRIPTOR.oneofs:
        if oneof.fields and not (len(oneof.fields) == 1 and oneof.name.startswith("_")):
            options = [f.name for f in oneof.fields] + [None]
            chosen_oneof[oneof.name] = rng.choice(options)
    for field in message.DESCRIPTOR.fields:
        real_oneof = (
            field.containing_oneof is not None and field.containing_oneof.name in chosen_oneof
        )
        if real_oneof and chosen_oneof[field.containing_oneof.name] != field.name:
            continue
        is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
        if field.is_repeated:
            if is_map:
                continue
            for _ in range(rng.choice([0, 0, 1, 2, 3])):
                container = getattr(message, field.name)
                if field.message_type is not None:
                    if depth < 3 and not field.message_type.full_name.startswith("google."):
                        _fill(container.add(), rng, depth + 1, strings)
                else:
                    container.append(_scalar(field, rng, strings))
            continue
        if field.message_type is not None:
            if (
                depth < 3
                and rng.random() < 0.6
                and not field.message_type.full_name.startswith("google.")
            ):
                _fill(getattr(message, field.name), rng, depth + 1, strings)
                getattr(message, field.name).SetInParent()
            continue
        if field.has_presence and rng.random() < 0.4 and not real_oneof:
            continue
        setattr(message, field.name, _scalar(field, rng, strings))


def _reference(message: Message) -> list[str]:
    try:
        protovalidate.validate(message)
    except protovalidate.ValidationError as error:
        return sorted(field_path(v) for v in error.violations)
    return []


MESSAGE_TYPES = [d for d in _message_types() if not uses_fallback(d)]


def test_hot_request_types_are_compiled_not_interpreted() -> None:
    names = {d.full_name for d in MESSAGE_TYPES}
    for hot in (
        "visionmesh.gateway.v1.CreateTrainingJobRequest",
        "visionmesh.gateway.v1.GetJobRequest",
        "visionmesh.gateway.v1.SignUpRequest",
        "visionmesh.training.v1.ValidateSpecRequest",
    ):
        assert hot in names


@pytest.mark.parametrize("descriptor", MESSAGE_TYPES, ids=lambda d: d.full_name)
def test_compiled_checks_match_protovalidate(descriptor: Descriptor) -> None:
    from google.protobuf import message_factory

    message_class = message_factory.GetMessageClass(descriptor)
    rng = random.Random(descriptor.full_name)
    # Strings allowed by `in` rules anywhere in the type make valid messages likely too.
    strings = list(_STRINGS)
    for _ in range(40):
        message = message_class()
        _fill(message, rng, 0, strings)
        fast = collect_violations(message)
        assert fast is not None
        assert sorted(v.field for v in fast) == _reference(message), message


def test_validate_message_names_every_bad_field() -> None:
    from google.protobuf import json_format
    from visionmesh.api.gateway.v1 import jobs_pb2

    request = jobs_pb2.CreateTrainingJobRequest(dataset_id="d")
    json_format.ParseDict(
        {"framework": "keras", "task": "detect", "model": "", "epochs": 0, "imgsz": 64},
        request.spec,
    )
    with pytest.raises(InvalidArgument) as failure:
        validate_message(request)
    fields = sorted(v.field for v in failure.value.field_violations)
    assert fields == ["spec.epochs", "spec.framework", "spec.model"]
    request.spec.framework, request.spec.model, request.spec.epochs = "ultralytics", "m", 3
    validate_message(request)
