"""Fixtures of the export tests: a real Triton server (tools/triton) for repository tests."""

from tests.export.triton_server import triton_server  # noqa: F401
