"""The embedding service core: embedders and vector stores, free of any transport."""
