"""The embedding service's transports: thin adapters over EmbeddingCore."""
