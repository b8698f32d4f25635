"""The buf.validate rules of every message compile, and the key ones do what they say."""

from __future__ import annotations

import contextlib
import importlib
import pkgutil

import protovalidate
import pytest
import visionmesh.api
from google.protobuf import descriptor, message
from google.protobuf.message_factory import GetMessageClass
from visionmesh.api.common.v1 import image_pb2
from visionmesh.api.embedding.v1 import embedding_pb2 as embedding
from visionmesh.api.events.v1 import events_pb2 as events
from visionmesh.api.export.v1 import export_pb2 as export
from visionmesh.api.inference.v1 import inference_pb2 as inference


def _messages() -> list[descriptor.Descriptor]:
    found = []

    def walk(message_type: descriptor.Descriptor) -> None:
        if not message_type.GetOptions().map_entry:
            found.append(message_type)
        for nested in message_type.nested_types:
            walk(nested)

    for info in pkgutil.walk_packages(visionmesh.api.__path__, "visionmesh.api."):
        if info.name.endswith("_pb2"):
            file = importlib.import_module(info.name).DESCRIPTOR
            for message_type in file.message_types_by_name.values():
                walk(message_type)
    return found


@pytest.mark.parametrize("message_type", _messages(), ids=lambda m: m.full_name)
def test_rules_compile(message_type: descriptor.Descriptor) -> None:
    # An empty message may well be invalid; a rule protovalidate cannot compile (bad CEL,
    # a rule for the wrong field type) raises CompilationError instead.
    with contextlib.suppress(protovalidate.ValidationError):
        protovalidate.validate(GetMessageClass(message_type)())


def _violations(msg: message.Message) -> set[tuple[str, str]]:
    """(dotted field path, rule id) of each violation."""
    try:
        protovalidate.validate(msg)
    except protovalidate.ValidationError as error:
        return {
            (
                ".".join(
                    e.field_name + (f"[{e.index}]" if e.HasField("index") else "")
                    for e in v.proto.field.elements
                ),
                v.proto.rule_id,
            )
            for v in error.violations
        }
    return set()


VALID = [
    export.ValidateSpecRequest(
        spec=export.ExportSpec(model_version_id="mv", formats=["onnx", "tensorrt"], imgsz=640)
    ),
    inference.LoadModelRequest(name="shelf-detector", model_version_id="mv"),
    inference.PredictRequest(
        deployment="d", images=[image_pb2.Image(key="a.jpg")], options=inference.PredictOptions()
    ),
    embedding.ValidateEmbeddingSpecRequest(
        spec=embedding.EmbeddingJobSpec(
            dataset=embedding.DatasetSource(snapshot_id="s"),
            routing=embedding.CollectionRouting(default_collection="products"),
        )
    ),
    embedding.SearchRequest(collection="c", vector=embedding.Vector(values=[0.1, 0.2])),
    events.JobRequest(job_id="j", export=events.ExportJobRequest()),
]


@pytest.mark.parametrize("msg", VALID, ids=lambda m: m.DESCRIPTOR.full_name)
def test_valid_examples(msg: message.Message) -> None:
    assert _violations(msg) == set()


INVALID = [
    (
        export.ValidateSpecRequest(
            spec=export.ExportSpec(model_version_id="mv", formats=["pt"], imgsz=650)
        ),
        {("spec.formats[0]", "string.in"), ("spec.imgsz", "imgsz.multiple_of_32")},
    ),
    (export.ValidateSpecRequest(), {("spec", "required")}),
    (
        inference.LoadModelRequest(name="Bad Name", backend="tf"),
        {("name", "string.pattern"), ("backend", "string.in"), ("source", "required")},
    ),
    (
        inference.PredictRequest(deployment="d", images=[image_pb2.Image()]),
        {("images[0].source", "required")},
    ),
    (
        inference.PredictRequest(
            deployment="d",
            images=[image_pb2.Image(data=b"x")],
            options=inference.PredictOptions(conf=1.5),
        ),
        {("options.conf", "float.gte_lte")},
    ),
    (
        embedding.ValidateEmbeddingSpecRequest(
            spec=embedding.EmbeddingJobSpec(routing=embedding.CollectionRouting())
        ),
        {
            ("spec.source", "required"),
            ("spec.routing.default_collection", "string.min_len"),
            ("spec.routing.default_collection", "string.pattern"),
        },
    ),
    (
        embedding.CreateCollectionRequest(name="c", distance="l2"),
        {("distance", "string.in")},
    ),
]


@pytest.mark.parametrize(
    "msg, expected", INVALID, ids=[f"{m.DESCRIPTOR.name}-{i}" for i, (m, _) in enumerate(INVALID)]
)
def test_invalid_examples(msg: message.Message, expected: set[tuple[str, str]]) -> None:
    assert _violations(msg) == expected
