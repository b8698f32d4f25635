"""gRPC adapters of the training service."""
