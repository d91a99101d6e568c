"""Benchmarks: our path and a baseline side by side in one process, printing ratios."""
