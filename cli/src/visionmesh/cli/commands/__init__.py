"""The `visionmesh` command groups, one module each; `register` adds a module's commands."""
