"""The precompiled encoder writes exactly what json_format.MessageToDict writes."""

from __future__ import annotations

from typing import Any

from google.protobuf import (
    descriptor_pb2,
    descriptor_pool,
    json_format,
    message_factory,
    struct_pb2,
    text_format,
)
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import given, settings
from hypothesis import strategies as st
from visionmesh.api.common.v1 import job_pb2
from visionmesh.api.gateway.v1 import auth_pb2, datasets_pb2, jobs_pb2, models_pb2
from visionmesh.api.training.v1 import training_pb2
from visionmesh.gateway.api.rest._json import message_encoder

# Every field shape the real contracts might grow into.
_KITCHEN_PROTO = """
name: "vmtest/rest/kitchen.proto"
package: "vmtest.kitchen"
dependency: "google/protobuf/duration.proto"
dependency: "google/protobuf/field_mask.proto"
dependency: "google/protobuf/struct.proto"
dependency: "google/protobuf/wrappers.proto"
dependency: "google/protobuf/empty.proto"
syntax: "proto3"
enum_type { name: "Color" value { name: "COLOR_UNSPECIFIED" number: 0 }
                          value { name: "COLOR_RED" number: 1 } }
message_type {
  name: "Sink"
  field { name: "f_double" number: 1 type: TYPE_DOUBLE }
  field { name: "f_float" number: 2 type: TYPE_FLOAT }
  field { name: "f_int64" number: 3 type: TYPE_INT64 }
  field { name: "f_uint64" number: 4 type: TYPE_UINT64 }
  field { name: "f_int32" number: 5 type: TYPE_INT32 }
  field { name: "f_fixed64" number: 6 type: TYPE_FIXED64 }
  field { name: "f_fixed32" number: 7 type: TYPE_FIXED32 }
  field { name: "f_bool" number: 8 type: TYPE_BOOL }
  field { name: "f_string" number: 9 type: TYPE_STRING }
  field { name: "f_bytes" number: 10 type: TYPE_BYTES }
  field { name: "f_uint32" number: 11 type: TYPE_UINT32 }
  field { name: "f_sint64" number: 12 type: TYPE_SINT64 }
  field { name: "f_color" number: 13 type: TYPE_ENUM type_name: ".vmtest.kitchen.Color" }
  field { name: "r_float" number: 14 type: TYPE_FLOAT label: LABEL_REPEATED }
  field { name: "r_bytes" number: 15 type: TYPE_BYTES label: LABEL_REPEATED }
  field { name: "r_color" number: 16 type: TYPE_ENUM label: LABEL_REPEATED
          type_name: ".vmtest.kitchen.Color" }
  field { name: "child" number: 17 type: TYPE_MESSAGE type_name: ".vmtest.kitchen.Sink" }
  field { name: "children" number: 18 type: TYPE_MESSAGE label: LABEL_REPEATED
          type_name: ".vmtest.kitchen.Sink" }
  field { name: "by_bool" number: 19 type: TYPE_MESSAGE label: LABEL_REPEATED
          type_name: ".vmtest.kitchen.Sink.ByBoolEntry" }
  field { name: "by_int" number: 20 type: TYPE_MESSAGE label: LABEL_REPEATED
          type_name: ".vmtest.kitchen.Sink.ByIntEntry" }
  field { name: "opt_int" number: 21 type: TYPE_INT32 proto3_optional: true oneof_index: 1 }
  field { name: "pick_text" number: 22 type: TYPE_STRING oneof_index: 0 }
  field { name: "pick_sink" number: 23 type: TYPE_MESSAGE oneof_index: 0
          type_name: ".vmtest.kitchen.Sink" }
  field { name: "duration" number: 24 type: TYPE_MESSAGE type_name: ".google.protobuf.Duration" }
  field { name: "mask" number: 25 type: TYPE_MESSAGE type_name: ".google.protobuf.FieldMask" }
  field { name: "struct" number: 26 type: TYPE_MESSAGE type_name: ".google.protobuf.Struct" }
  field { name: "value" number: 27 type: TYPE_MESSAGE type_name: ".google.protobuf.Value" }
  field { name: "wrapped" number: 28 type: TYPE_MESSAGE type_name: ".google.protobuf.Int64Value" }
  field { name: "null" number: 29 type: TYPE_ENUM type_name: ".google.protobuf.NullValue" }
  field { name: "empty" number: 30 type: TYPE_MESSAGE type_name: ".google.protobuf.Empty" }
  nested_type { name: "ByBoolEntry" options { map_entry: true }
    field { name: "key" number: 1 type: TYPE_BOOL }
    field { name: "value" number: 2 type: TYPE_MESSAGE type_name: ".vmtest.kitchen.Sink" } }
  nested_type { name: "ByIntEntry" options { map_entry: true }
    field { name: "key" number: 1 type: TYPE_SINT32 }
    field { name: "value" number: 2 type: TYPE_ENUM type_name: ".vmtest.kitchen.Color" } }
  oneof_decl { name: "pick" }
  oneof_decl { name: "_opt_int" }
}
"""


def _kitchen() -> Descriptor:
    from google.protobuf import (  # noqa: F401  (load the files the proto imports)
        duration_pb2,
        empty_pb2,
        field_mask_pb2,
        wrappers_pb2,
    )

    proto = descriptor_pb2.FileDescriptorProto()
    text_format.Parse(_KITCHEN_PROTO, proto)
    pool = descriptor_pool.Default()
    try:
        pool.FindFileByName(proto.name)
    except KeyError:
        pool.Add(proto)
    return pool.FindMessageTypeByName("vmtest.kitchen.Sink")


KITCHEN = _kitchen()

_INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}
_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=8)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind in _INT_RANGES:
        low, high = _INT_RANGES[kind]
        return st.integers(low, high)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_STRING:
        return _TEXT
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=8)
    if kind == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        numbers = [v.number for v in field.enum_type.values]
        return st.sampled_from(numbers) | st.just(77)  # 77: an unknown (open enum) value
    raise AssertionError(field.full_name)


def _message(descriptor: Descriptor, depth: int) -> st.SearchStrategy[Message]:
    cls = message_factory.GetMessageClass(descriptor)
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return st.builds(
            lambda s, n: cls(seconds=s, nanos=n),
            st.integers(-62135596800, 253402300799),
            st.integers(0, 999_999_999),
        )
    if name == "google.protobuf.Duration":
        return st.builds(
            lambda s, n: cls(seconds=s, nanos=n if s >= 0 else -n),
            st.integers(-315576000000, 315576000000),
            st.integers(0, 999_999_999),
        )
    if name == "google.protobuf.FieldMask":
        return st.builds(
            lambda p: cls(paths=p),
            st.lists(st.from_regex(r"[a-z]+(_[a-z]+)?", fullmatch=True), max_size=3),
        )
    if name == "google.protobuf.Struct":
        return st.builds(
            lambda d: _struct(d), st.dictionaries(_TEXT, st.integers(-5, 5) | _TEXT, max_size=3)
        )
    if name == "google.protobuf.Value":
        return st.sampled_from(
            [
                struct_pb2.Value(number_value=1.5),
                struct_pb2.Value(string_value="s"),
                struct_pb2.Value(null_value=struct_pb2.NULL_VALUE),
            ]
        )
    if name == "google.protobuf.Any":
        return st.builds(_packed, _TEXT)
    fields = [
        f
        for f in descriptor.fields
        if depth < 2 or f.message_type is None or f.message_type.full_name.startswith("google.")
    ]

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in (
            draw(st.lists(st.sampled_from(fields), unique=True, max_size=len(fields)))
            if fields
            else []
        ):
            _set(message, field, draw, depth)
        return message

    return build()


def _struct(data: dict[str, Any]) -> Message:
    struct = struct_pb2.Struct()
    struct.update(data)
    return struct


def _packed(reason: str) -> Message:
    from google.protobuf import any_pb2

    packed = any_pb2.Any()
    packed.Pack(job_pb2.JobError(reason=reason, message="m"))
    return packed


def _set(message: Message, field: FieldDescriptor, draw: st.DrawFn, depth: int) -> None:
    target = getattr(message, field.name)
    message_type = field.message_type
    if message_type is not None and message_type.GetOptions().map_entry:
        key_field = message_type.fields_by_name["key"]
        value_field = message_type.fields_by_name["value"]
        for key in draw(st.lists(_scalar(key_field), max_size=3, unique=True)):
            if value_field.message_type is not None:
                target[key].CopyFrom(draw(_message(value_field.message_type, depth + 1)))
            else:
                target[key] = draw(_scalar(value_field))
    elif field.is_repeated:
        if message_type is not None:
            for item in draw(st.lists(_message(message_type, depth + 1), max_size=2)):
                target.add().CopyFrom(item)
        else:
            target.extend(draw(st.lists(_scalar(field), max_size=3)))
    elif message_type is not None:
        target.CopyFrom(draw(_message(message_type, depth + 1)))
        if not target.ListFields():
            target.SetInParent()
    else:
        setattr(message, field.name, draw(_scalar(field)))


DESCRIPTORS: list[Any] = [
    KITCHEN,
    job_pb2.Job.DESCRIPTOR,
    jobs_pb2.WatchJobResponse.DESCRIPTOR,
    jobs_pb2.ListJobsResponse.DESCRIPTOR,
    datasets_pb2.Dataset.DESCRIPTOR,
    training_pb2.TrainingSpec.DESCRIPTOR,
    models_pb2.ListModelsResponse.DESCRIPTOR,
    auth_pb2.GetMeResponse.DESCRIPTOR,
]


def _expected(message: Message) -> Any:
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_encoder_matches_message_to_dict(data: st.DataObject) -> None:
    descriptor = data.draw(st.sampled_from(DESCRIPTORS))
    message = data.draw(_message(descriptor, 0))
    assert message_encoder(descriptor)(message) == _expected(message)


def test_empty_messages_print_every_field_without_presence() -> None:
    empty = message_factory.GetMessageClass(KITCHEN)()
    encoded = message_encoder(KITCHEN)(empty)
    assert encoded == _expected(empty)
    assert encoded["fInt64"] == "0"
    assert encoded["rFloat"] == []
    assert encoded["byBool"] == {}
    assert encoded["fColor"] == "COLOR_UNSPECIFIED"
    assert "optInt" not in encoded and "child" not in encoded
