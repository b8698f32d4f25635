"""Triton Python-backend model: encoded images (IMAGE bytes) -> the model's input tensor.

Written into a repository as `<name>-preprocess/<version>/model.py`, next to a verbatim copy
of visionmesh.common.vision's processing.py; runs in Triton's Python stub, which has no
visionmesh. The ModelMetadata JSON comes from the config parameter "visionmesh_metadata".
Outputs the input tensor (named as in the metadata) and TRANSFORM, one row of
Transform.to_list() per image, which the postprocess model needs to map boxes back.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import triton_python_backend_utils as pb_utils
from processing import decode_image, preprocess


class TritonPythonModel:
    """Decodes each request's images and letterboxes/resizes and normalises them."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        self.meta: dict[str, Any] = json.loads(
            config["parameters"]["visionmesh_metadata"]["string_value"]
        )
        self.input_name: str = self.meta["input"]["name"]

    def execute(self, requests: list[Any]) -> list[Any]:
        responses = []
        for request in requests:
            encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                images = [decode_image(bytes(item)) for item in encoded.reshape(-1)]
                batch, transforms = preprocess(images, self.meta)
            except ValueError as exc:
                # One undecodable image fails its own request, not the others batched with it.
                responses.append(
                    pb_utils.InferenceResponse(error=pb_utils.TritonError(f"IMAGE: {exc}"))
                )
                continue
            transform = np.asarray([t.to_list() for t in transforms], dtype=np.float32)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(self.input_name, batch),
                        pb_utils.Tensor("TRANSFORM", transform.reshape(len(transforms), -1)),
                    ]
                )
            )
        return responses
