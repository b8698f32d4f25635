"""Fixtures of the inference tests: a real Triton server (tools/triton) for the triton runtime."""

from tests.export.triton_server import triton_server  # noqa: F401
