"""The inference service's own table: deployments as desired state, shared by all replicas."""
