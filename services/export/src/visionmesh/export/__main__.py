"""`python -m visionmesh.export`: run the export service."""

from visionmesh.export.app import main

main()
