"""Triton Python-backend model: the exported model's outputs -> detections or classes.

Written into a repository as `<name>-postprocess/<version>/model.py`, next to a verbatim copy
of visionmesh.common.vision's processing.py; runs in Triton's Python stub, which has no
visionmesh. The ModelMetadata JSON comes from the config parameter "visionmesh_metadata".

Detect and segment: DETECTIONS [batch, k, 6] (x1, y1, x2, y2, score, class in original
pixels), zero rows after NUM_DETECTIONS[i] for image i, k the largest count in the request.
Request parameters "conf", "iou" and "max_det" override the metadata's NMS defaults.
Classify: PROBABILITIES [batch, classes], TOP_CLASSES and TOP_SCORES [batch, k].
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import triton_python_backend_utils as pb_utils
from processing import Transform, classifications, detections

_OVERRIDES = {"conf": float, "iou": float, "max_det": int}


class TritonPythonModel:
    """Runs NMS (or ranks classes) per request and maps boxes onto the original images."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.meta: dict[str, Any] = json.loads(
            config["parameters"]["visionmesh_metadata"]["string_value"]
        )
        self.output_names: list[str] = [o["name"] for o in self.meta["outputs"]]
        self.classify = self.meta["postprocess"] in ("probabilities", "logits")
        results = {o["name"]: o for o in config["output"]}
        if self.classify:
            self.classes = int(results["PROBABILITIES"]["dims"][0])
            self.top_k = int(results["TOP_CLASSES"]["dims"][0])

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            outputs = [
                pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                for name in self.output_names
            ]
            try:
                if self.classify:
                    tensors = self._classify(outputs)
                else:
                    transforms = [
                        Transform.from_list(row)
                        for row in pb_utils.get_input_tensor_by_name(request, "TRANSFORM")
                        .as_numpy()
                        .reshape(len(outputs[0]), -1)
                    ]
                    tensors = self._detect(outputs, transforms, _overrides(request))
            except ValueError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
        return responses

    def _detect(
        self, outputs: list[np.ndarray], transforms: list[Any], overrides: dict[str, Any]
    ) -> list[Any]:
        found = detections(outputs, transforms, self.meta, **overrides)
        # A batched output is rectangular: pad every image to the request's largest count.
        k = max((len(boxes) for boxes in found), default=0)
        padded = np.zeros((len(found), k, 6), dtype=np.float32)
        for i, boxes in enumerate(found):
            padded[i, : len(boxes)] = boxes
        counts = np.asarray([[len(boxes)] for boxes in found], dtype=np.int32).reshape(-1, 1)
        return [pb_utils.Tensor("DETECTIONS", padded), pb_utils.Tensor("NUM_DETECTIONS", counts)]

    def _classify(self, outputs: list[np.ndarray]) -> list[Any]:
        # Every class ranked, so the full probability vector is the module's own softmax.
        ranked = classifications(outputs, self.meta, top_k=self.classes)
        probabilities = np.zeros((len(ranked), self.classes), dtype=np.float32)
        top_classes = np.zeros((len(ranked), self.top_k), dtype=np.int32)
        top_scores = np.zeros((len(ranked), self.top_k), dtype=np.float32)
        for i, image in enumerate(ranked):
            for class_id, probability in image:
                probabilities[i, class_id] = probability
            top_classes[i] = [class_id for class_id, _ in image[: self.top_k]]
            top_scores[i] = [probability for _, probability in image[: self.top_k]]
        return [
            pb_utils.Tensor("PROBABILITIES", probabilities),
            pb_utils.Tensor("TOP_CLASSES", top_classes),
            pb_utils.Tensor("TOP_SCORES", top_scores),
        ]


def _overrides(request: Any) -> dict[str, Any]:
    """conf, iou and max_det from the request's parameters, when it sets them."""
    parameters = json.loads(request.parameters() or "{}")
    overrides: dict[str, Any] = {}
    for key, kind in _OVERRIDES.items():
        if key in parameters:
            try:
                overrides[key] = kind(parameters[key])
            except (TypeError, ValueError) as exc:
                raise ValueError(f"request parameter {key}={parameters[key]!r}: {exc}") from exc
    return overrides
