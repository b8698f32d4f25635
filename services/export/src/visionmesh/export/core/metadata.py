"""metadata.json: how to run an exported model without its training code (ModelMetadata)."""

from __future__ import annotations

from typing import Any

import onnx
from google.protobuf import json_format
from visionmesh.api.export.v1 import export_pb2
from visionmesh.export.core.onnx_export import INPUT_NAME, tensor_infos
from visionmesh.export.core.source import SourceModel

# Ultralytics' letterbox pads with grey 114; its classifiers resize the short side and
# crop the centre; both feed 0-1 RGB without mean/std. visionmesh's torchvision
# classifiers are trained on a stretched resize with ImageNet normalisation.
_LETTERBOX_PAD = 114


def model_metadata(
    source: SourceModel,
    spec: export_pb2.ExportSpec,
    graph: onnx.ModelProto,
    *,
    model_version_id: str,
    nms_in_graph: bool,
) -> export_pb2.ModelMetadata:
    batch = spec.max_batch_size
    side = -1 if spec.dynamic_size else spec.imgsz
    metadata = export_pb2.ModelMetadata(
        model_version_id=model_version_id,
        framework=source.framework,
        task=source.task,
        class_names=source.class_names,
        input=export_pb2.TensorInfo(
            name=INPUT_NAME,
            datatype="FP32",
            shape=[-1 if spec.dynamic_batch else batch, 3, side, side],
        ),
        layout="NCHW",
        input_height=spec.imgsz,
        input_width=spec.imgsz,
        channel_order="rgb",
        scale=1 / 255,
        outputs=tensor_infos(graph),
        dynamic_batch=spec.dynamic_batch,
        max_batch_size=batch,
        opset=spec.opset,
        nms_in_graph=nms_in_graph,
    )
    if source.task in ("detect", "segment"):
        metadata.resize = "letterbox"
        metadata.pad_value = _LETTERBOX_PAD
        metadata.mean[:] = [0.0, 0.0, 0.0]
        metadata.std[:] = [1.0, 1.0, 1.0]
        metadata.postprocess = "yolo_segment" if source.task == "segment" else "yolo_detect"
        metadata.nms.CopyFrom(spec.nms_settings)
    elif source.framework == "torchvision":
        metadata.resize = "resize"
        metadata.mean[:] = list(source.mean)
        metadata.std[:] = list(source.std)
        metadata.postprocess = "probabilities" if spec.softmax else "logits"
    else:
        metadata.resize = "center_crop"
        metadata.mean[:] = [0.0, 0.0, 0.0]
        metadata.std[:] = [1.0, 1.0, 1.0]
        metadata.postprocess = "probabilities"  # Ultralytics' Classify head ends in softmax
    return metadata


def metadata_dict(metadata: export_pb2.ModelMetadata) -> dict[str, Any]:
    """The form the processing code and Triton's Python models read (snake_case keys)."""
    return json_format.MessageToDict(
        metadata, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def metadata_json(metadata: export_pb2.ModelMetadata) -> str:
    return json_format.MessageToJson(
        metadata,
        preserving_proto_field_name=True,
        always_print_fields_with_no_presence=True,
        indent=2,
        sort_keys=True,
    )
