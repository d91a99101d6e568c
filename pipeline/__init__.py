"""The four-phase training pipeline: validation, download, extraction, index."""
