"""Shared utilities with no project imports: atomic files, images, logging, tiny CLIP."""
