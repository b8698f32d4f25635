"""Transport-free core of the gateway: the logic its gRPC and REST adapters call."""
