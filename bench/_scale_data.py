"""Synthetic catalogue for bench/scale.py: clustered unit vectors and metadata, generated chunk by chunk.

Every chunk is a pure function of (seed, chunk number), so the build worker and the bench process
regenerate the same vectors without ever holding all N in memory (or passing them between processes).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

CHUNK = 20_000  # products per generated chunk (and per store upsert)
CLUSTERS = 1000
CATEGORIES = 1000  # one category = 0.1% of the catalogue
SPREAD = 0.9  # noise norm around a cluster centre: cosine to the centre about 0.75, as CLIP-ish clusters
QUERY_NOISE = 0.5  # a query is a stored vector plus this much noise (norm), renormalised


def product_id(i: int) -> str:
    return f"P{i:09d}"


def product_index(pid: str) -> int:
    return int(pid[1:])


def category(i: int | np.ndarray) -> np.ndarray:
    return np.asarray(i) * 7919 % CATEGORIES  # a fixed shuffle: neighbours in id differ in category


def category_name(c: int) -> str:
    return f"cat{int(c):04d}"


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class Synthetic:
    """N clustered unit vectors of ``dim`` dimensions, chunk by chunk."""

    n: int
    dim: int
    seed: int = 0

    def centres(self) -> np.ndarray:
        return _unit(np.random.default_rng([self.seed, 0]).standard_normal((CLUSTERS, self.dim), dtype=np.float32))

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """(first product index, vectors) for each chunk, in order."""
        centres = self.centres()
        for number, start in enumerate(range(0, self.n, CHUNK)):
            yield start, self.chunk(number, start, centres)

    def chunk(self, number: int, start: int, centres: np.ndarray) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 1, number])
        size = min(CHUNK, self.n - start)
        which = rng.integers(0, CLUSTERS, size)
        noise = rng.standard_normal((size, self.dim), dtype=np.float32) * np.float32(SPREAD / np.sqrt(self.dim))
        return _unit(centres[which] + noise)

    def prices(self, start: int, size: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, 2, start])
        return np.round(rng.uniform(1.0, 1000.0, size), 2)

    def queries(self, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(product index each query was copied from, noisy unit query vectors)."""
        rng = np.random.default_rng([self.seed, 3])
        picks = np.sort(rng.choice(self.n, size=min(count, self.n), replace=False))
        base = np.zeros((len(picks), self.dim), dtype=np.float32)
        for start, vectors in self.chunks():
            inside = (picks >= start) & (picks < start + len(vectors))
            base[inside] = vectors[picks[inside] - start]
        noise = rng.standard_normal(base.shape, dtype=np.float32) * np.float32(QUERY_NOISE / np.sqrt(self.dim))
        order = rng.permutation(len(picks))  # queries in random order, not by id
        return picks[order], _unit(base + noise)[order]

    def exact_top(self, queries: np.ndarray, k: int = 10) -> np.ndarray:
        """Exact top-``k`` product indices per query (cosine), streaming over the chunks."""
        best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        best_i = np.full((len(queries), k), -1, dtype=np.int64)
        for start, vectors in self.chunks():
            scores = queries @ vectors.T
            all_s = np.concatenate([best_s, scores], axis=1)
            all_i = np.concatenate([best_i, np.broadcast_to(np.arange(start, start + len(vectors)), scores.shape)],
                                   axis=1)
            top = np.argpartition(-all_s, k - 1, axis=1)[:, :k]
            best_s, best_i = np.take_along_axis(all_s, top, axis=1), np.take_along_axis(all_i, top, axis=1)
        return best_i
