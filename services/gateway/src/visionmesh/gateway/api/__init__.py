"""Transport adapters of the gateway: gRPC servicers and the REST/JSON transcoder."""
