"""The shared request limits are the contract's own numbers."""

from __future__ import annotations

from buf.validate import validate_pb2
from visionmesh.api.common.v1 import image_pb2
from visionmesh.api.inference.v1 import inference_pb2
from visionmesh.common.limits import (
    MAX_IMAGE_BYTES,
    MAX_IMAGES_PER_REQUEST,
    PREDICT_MAX_MESSAGE_BYTES,
)
from visionmesh.gateway.config import GatewaySettings
from visionmesh.inference.config import InferenceSettings


def _rules(message: type, field: str) -> validate_pb2.FieldRules:
    options = message.DESCRIPTOR.fields_by_name[field].GetOptions()  # type: ignore[attr-defined]
    return options.Extensions[validate_pb2.field]


def test_limits_match_the_contract() -> None:
    assert _rules(inference_pb2.PredictRequest, "images").repeated.max_items == (
        MAX_IMAGES_PER_REQUEST
    )
    assert _rules(image_pb2.Image, "data").bytes.max_len == MAX_IMAGE_BYTES
    assert PREDICT_MAX_MESSAGE_BYTES > MAX_IMAGES_PER_REQUEST * MAX_IMAGE_BYTES


def test_both_hops_of_predict_carry_a_full_request() -> None:
    for settings in (GatewaySettings, InferenceSettings):
        assert settings.model_fields["grpc_max_message_bytes"].default == (
            PREDICT_MAX_MESSAGE_BYTES
        )
    assert InferenceSettings.model_fields["max_image_bytes"].default == MAX_IMAGE_BYTES
