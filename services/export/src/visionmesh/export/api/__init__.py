"""The export service's gRPC API."""
