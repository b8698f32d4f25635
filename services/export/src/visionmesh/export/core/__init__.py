"""The export pipeline: checkpoint -> ONNX (and TensorRT) -> parity check -> Triton repository."""
