"""`python -m visionmesh.embedding`: run the embedding service."""

from visionmesh.embedding.app import main

main()
