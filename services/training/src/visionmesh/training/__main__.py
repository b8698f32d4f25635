"""`python -m visionmesh.training`: run the training service."""

from visionmesh.training.app import main

main()
