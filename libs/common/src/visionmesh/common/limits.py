"""Request size limits that the contract states and every transport must agree on.

`inference.proto` allows at most 64 images per Predict and `image.proto` 20 MiB per image;
the gateway (gRPC and REST) and the inference service size their message limits from
these numbers, and a test checks them against the contract's own annotations.
"""

from __future__ import annotations

MAX_IMAGES_PER_REQUEST = 64
MAX_IMAGE_BYTES = 20 * 1024 * 1024
PREDICT_MAX_MESSAGE_BYTES = MAX_IMAGES_PER_REQUEST * MAX_IMAGE_BYTES + 1024 * 1024
"""A full Predict request: every image at its limit, and room for the rest of the message."""
