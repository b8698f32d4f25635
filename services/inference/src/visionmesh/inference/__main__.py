"""`python -m visionmesh.inference`: run the inference service."""

from visionmesh.inference.app import main

main()
