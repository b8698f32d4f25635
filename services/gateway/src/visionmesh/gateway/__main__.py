"""`python -m visionmesh.gateway`: run the gateway."""

from visionmesh.gateway.app import main

main()
