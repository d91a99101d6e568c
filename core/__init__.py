"""Domain core: settings, model registry, encoder, vector index and typed errors."""
