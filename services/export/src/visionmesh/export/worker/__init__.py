"""The export job handler on the shared job runtime."""
