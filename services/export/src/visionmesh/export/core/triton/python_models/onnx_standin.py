"""Triton Python-backend stand-in for an onnxruntime_onnx model (see use_python_standin).

Runs the model's own `<version>/model.onnx` with onnxruntime on the CPU, with the inputs,
outputs and batching of its config, for Triton builds without the ONNX Runtime backend.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One onnxruntime session; requests of equal shapes run together as one batch."""

    def initialize(self, args: dict[str, Any]) -> None:
        config = json.loads(args["model_config"])
        path = os.path.join(args["model_repository"], args["model_version"], "model.onnx")
        self.session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self.batched = int(config.get("max_batch_size", 0)) > 0
        self.input_names: list[str] = [i["name"] for i in config["input"]]
        self.output_names: list[str] = [o["name"] for o in config["output"]]

    def execute(self, requests: list[Any]) -> list[Any]:
        feeds = [
            [pb_utils.get_input_tensor_by_name(r, name).as_numpy() for name in self.input_names]
            for r in requests
        ]
        shapes = {tuple(tuple(a.shape[1:]) for a in feed) for feed in feeds}
        if self.batched and len(shapes) == 1:
            # What Triton's batcher does for the real backend: one run over all requests.
            merged = [np.concatenate(arrays) for arrays in zip(*feeds, strict=True)]
            results = self._run(merged)
            bounds = np.cumsum([feed[0].shape[0] for feed in feeds])[:-1]
            per_request = [np.split(result, bounds) for result in results]
            split = [[chunks[i] for chunks in per_request] for i in range(len(requests))]
        else:
            split = [self._run(feed) for feed in feeds]
        return [
            pb_utils.InferenceResponse(
                output_tensors=[
                    pb_utils.Tensor(name, np.ascontiguousarray(array))
                    for name, array in zip(self.output_names, arrays, strict=True)
                ]
            )
            for arrays in split
        ]

    def _run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        results = self.session.run(
            self.output_names, dict(zip(self.input_names, inputs, strict=True))
        )
        return [np.asarray(r) for r in results]
