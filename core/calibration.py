"""Score calibration: a per-model monotone map from raw cosine to a probability of relevance.

Raw cosine has a scale of its own in every model (a head, another backbone, text against images):
0.3 can be a better match in one model than 0.8 in another. Each model therefore fits, from its own
catalogue, a logistic map ``match = 1 / (1 + exp(-(a * cosine + b)))`` with ``a > 0``:

- with categories, relevant pairs are products of the same category and irrelevant ones products of
  different categories (a seeded sample of products, every pair among them);
- without categories, relevant pairs are each sampled product and its nearest neighbour in the
  index, irrelevant ones random pairs.

Image-to-image and text-to-image are fitted separately; text queries are product titles through
the CLIP text tower (and the model's head, as the API does). Both classes weigh the same, so 0.5 is
the cosine at which a pair is as likely relevant as not, whatever the catalogue's category balance:
that is what makes ``match`` comparable across models. The map is saved as ``calibration.json``
beside ``index.json``, tagged with the head and the index build it was fitted for.

Both stores calibrate through ``ensure_calibration`` and ``fit_calibration``: a store gives its sample, its
index's nearest neighbours and where it saves the result; when a calibration is stale, how it is fitted and
what it records live here once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from core.types import Embeddings
from utils.atomic import read_json, write_json_atomic

if TYPE_CHECKING:
    from core.config import Settings
    from core.head import ProjectionHead
    from core.store import Product, ServedIndex

logger = logging.getLogger(__name__)

CALIBRATION_JSON = "calibration.json"
IMAGE, TEXT = "image", "text"
MAX_PAIRS = 20_000  # per class, for the fit
SELF_SHARE = 10  # positives per self pair added
MIN_SLOPE = 1e-6  # a fit whose slope would not be positive is kept flat at this (no signal)
TextEncoder = Callable[[Sequence[str]], Embeddings]
Neighbours = Callable[[Embeddings, np.ndarray], np.ndarray]  # queries, own keys -> best other score per query
_Index = TypeVar("_Index", bound="ServedIndex")


@dataclass(frozen=True)
class LogisticMap:
    """``match = sigmoid(a * cosine + b)``, increasing in cosine (a > 0)."""

    a: float
    b: float
    informative: bool = True  # False: relevant pairs scored no higher than irrelevant ones (slope clamped)

    def __call__(self, scores: np.ndarray | float) -> np.ndarray:
        z = self.a * np.asarray(scores, dtype=np.float64) + self.b
        return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -60, 60))))

    @property
    def midpoint(self) -> float:
        """The cosine where match is 0.5."""
        return -self.b / self.a

    def to_json(self) -> dict[str, float]:
        return {"a": self.a, "b": self.b, "midpoint": round(self.midpoint, 6), "informative": self.informative}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LogisticMap:
        return cls(a=float(data["a"]), b=float(data["b"]), informative=bool(data.get("informative", True)))


def fit_logistic(positives: np.ndarray, negatives: np.ndarray, *, ridge: float = 1e-3) -> LogisticMap:
    """Class-balanced logistic regression of relevance on cosine (Newton's method, a small ridge so
    separable data stays finite); the slope is kept positive so the map is monotone."""
    pos, neg = np.asarray(positives, np.float64).ravel(), np.asarray(negatives, np.float64).ravel()
    if not len(pos) or not len(neg):
        raise ValueError("calibration needs relevant and irrelevant pairs")
    x = np.concatenate([pos, neg])
    y = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))])
    w = np.concatenate([np.full(len(pos), 0.5 / len(pos)), np.full(len(neg), 0.5 / len(neg))])
    mu, sd = float(x.mean()), float(x.std()) or 1e-3
    design = np.stack([(x - mu) / sd, np.ones_like(x)], axis=1)
    theta = np.zeros(2)
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(design @ theta, -60, 60)))
        grad = design.T @ (w * (p - y)) + ridge * np.array([theta[0], 0.0])
        hess = (design * (w * p * (1 - p))[:, None]).T @ design + ridge * np.eye(2)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-9:
            break
    slope = max(float(theta[0]), MIN_SLOPE) / sd
    return LogisticMap(a=slope, b=float(theta[1]) - slope * mu, informative=float(theta[0]) > MIN_SLOPE)


@dataclass(frozen=True)
class Calibration:
    """A model's fitted maps, and what they were fitted for."""

    image: LogisticMap
    text: LogisticMap | None = None
    head: str | None = None
    index_built_at: str = ""
    generation: int = 0
    method: str = "category"
    pairs: dict[str, int] = field(default_factory=dict)
    fitted_at: str = ""

    def map_for(self, kind: str) -> LogisticMap | None:
        """The map for a query kind: ``text``, or ``image`` (also used for client vectors)."""
        return self.text if kind == TEXT else self.image

    def match(self, scores: np.ndarray | float, kind: str) -> np.ndarray | None:
        fitted = self.map_for(kind)
        return None if fitted is None else fitted(scores)

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image.to_json(), "text": self.text.to_json() if self.text else None,
                "head": self.head, "index_built_at": self.index_built_at, "generation": self.generation,
                "method": self.method, "pairs": self.pairs, "fitted_at": self.fitted_at}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        text = data.get("text")
        return cls(image=LogisticMap.from_json(data["image"]), text=LogisticMap.from_json(text) if text else None,
                   head=data.get("head"), index_built_at=str(data.get("index_built_at") or ""),
                   generation=int(data.get("generation") or 0), method=str(data.get("method") or ""),
                   pairs={str(k): int(v) for k, v in (data.get("pairs") or {}).items()},
                   fitted_at=str(data.get("fitted_at") or ""))


def load_calibration(folder: Path) -> Calibration | None:
    """The saved calibration, or None when it is missing or unreadable."""
    path = Path(folder) / CALIBRATION_JSON
    if not path.is_file():
        return None
    try:
        return Calibration.from_json(read_json(path))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("%s unreadable (%s): it will be fitted again", path, exc)
        return None


def save_calibration(folder: Path, calibration: Calibration) -> None:
    write_json_atomic(Path(folder) / CALIBRATION_JSON, calibration.to_json())


def _take(values: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    return values if len(values) <= n else rng.choice(values, size=n, replace=False)


def has_categories(categories: Sequence[str]) -> bool:
    """Enough labels for category pairs: two categories at least, one of them with two products."""
    labelled = [c for c in categories if c]
    return len(set(labelled)) >= 2 and len(labelled) > len(set(labelled))


def category_pairs(scores: np.ndarray, q_cats: Sequence[str], t_cats: Sequence[str], *, same_is_self: bool,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Scores of (query, target) pairs split into same-category (relevant) and different-category;
    pairs with a blank category and, when queries are the targets themselves, the diagonal, are left out."""
    qc, tc = np.asarray(q_cats, dtype=object), np.asarray(t_cats, dtype=object)
    same = qc[:, None] == tc[None, :]
    known = (qc != "")[:, None] & (tc != "")[None, :]
    if same_is_self:
        np.fill_diagonal(known, False)
    return _take(scores[same & known], MAX_PAIRS, rng), _take(scores[~same & known], MAX_PAIRS, rng)


def own_pairs(scores: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Query i belongs to target i (a title and its product): the diagonal is relevant, the rest random."""
    eye = np.eye(len(scores), dtype=bool)
    return scores[eye], _take(scores[~eye], MAX_PAIRS, rng)


def fit_image(vectors: Embeddings, categories: Sequence[str], keys: np.ndarray, neighbours: Neighbours,
              rng: np.random.Generator) -> tuple[LogisticMap, str, int]:
    """The image-to-image map from a sample of catalogue vectors; returns the map, the method and the
    number of pairs used."""
    scores = vectors @ vectors.T
    if has_categories(categories):
        pos, neg = category_pairs(scores, categories, categories, same_is_self=True, rng=rng)
        if len(pos) and len(neg):
            pos = _with_self(pos, scores, rng)
            fitted = fit_logistic(pos, neg)
            if fitted.informative:
                return fitted, "category", len(pos) + len(neg)
            logger.info("same-category pairs score no higher than others: calibrating on nearest neighbours")
    pos = neighbours(vectors, keys)
    pos = _with_self(pos[np.isfinite(pos)], scores, rng)
    _, neg = own_pairs(scores, rng)
    return fit_logistic(pos, neg), "neighbours", len(pos) + len(neg)


def _with_self(pos: np.ndarray, scores: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A product is relevant to itself: a tenth as many self pairs (cosine 1) anchor the top of the map,
    so an exact copy reads as a match even where category pairs barely separate."""
    n = max(1, len(pos) // SELF_SHARE)
    return np.concatenate([pos, _take(np.diag(scores), n, rng)])


def fit_text(text_vectors: Embeddings, vectors: Embeddings, categories: Sequence[str],
             rng: np.random.Generator) -> tuple[LogisticMap, int]:
    """The text-to-image map: row i of ``text_vectors`` is product i's title. Its own product and
    products of its category are relevant, other categories not (without categories: other products)."""
    scores = text_vectors @ vectors.T
    own, others = own_pairs(scores, rng)
    if has_categories(categories):
        pos, neg = category_pairs(scores, categories, categories, same_is_self=True, rng=rng)
        own, others = np.concatenate([own, pos]), neg if len(neg) else others
    return fit_logistic(own, others), len(own) + len(others)


TEXT_SAMPLE = 256  # product titles encoded as text queries for the text map


def stale(cal: Calibration | None, head: str | None, built_at: str, has_text_encoder: bool) -> bool:
    """True when there is no calibration, or it was fitted for another head or index build, or it lacks
    the text map while a text encoder is at hand."""
    return (cal is None or cal.head != head or cal.index_built_at != built_at
            or (cal.text is None and has_text_encoder))


def text_map(encoder: TextEncoder | None, head: ProjectionHead | None, previous: Calibration | None,
             head_sha: str | None, titles: Sequence[str], vectors: Embeddings, categories: Sequence[str],
             rng: np.random.Generator, counts: dict[str, int]) -> LogisticMap | None:
    """The text-to-image map from a sample of product titles through the CLIP text tower (and the head),
    recording its pair count in ``counts``; without an encoder, the previous map when it was fitted for
    the same head, else None."""
    if encoder is not None and len(titles) > 1:
        pick = np.sort(rng.choice(len(titles), size=min(len(titles), TEXT_SAMPLE), replace=False))
        texts = encoder([titles[i] for i in pick])
        if head is not None:
            texts = head.apply(texts)
        fitted, counts["text"] = fit_text(np.asarray(texts, np.float32), vectors[pick],
                                          [categories[i] for i in pick], rng)
        return fitted
    return previous.text if previous is not None and previous.head == head_sha else None


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


class Calibrated(Protocol[_Index]):
    """A store as calibration sees it (both stores are one)."""

    name: str
    settings: Settings
    head: ProjectionHead | None
    text_encoder: TextEncoder | None

    @property
    def calibration(self) -> Calibration | None: ...

    def open_index(self) -> _Index | None: ...

    def calibrate(self, live: _Index) -> Calibration | None: ...


def _head_sha(store: Calibrated[Any]) -> str | None:
    return store.head.sha256 if store.head is not None else None


def ensure_calibration(store: Calibrated[_Index]) -> Calibration | None:
    """``store``'s calibration, refitted (``store.calibrate``) when it is stale (see :func:`stale`) for the
    store's head, index build and text encoder; None for an empty store."""
    live = store.open_index()
    if live is None:
        return None
    if stale(store.calibration, _head_sha(store), live.info.built_at, store.text_encoder is not None):
        return store.calibrate(live)
    return store.calibration


@dataclass(frozen=True)
class Sample:
    """A seeded sample of a catalogue: its products, their indexed vectors and the keys ``Neighbours`` knows
    them by (row-aligned)."""

    products: Sequence[Product]
    vectors: Embeddings
    keys: np.ndarray


def fit_calibration(store: Calibrated[Any], live: ServedIndex, sample: Sample, neighbours: Neighbours,
                    save: Callable[[Calibration], None]) -> Calibration | None:
    """Fit the image map (and the text map when the store has a text encoder; else the previous text map is
    kept if it was fitted for the same head) from ``sample``, for ``live``'s build, and ``save`` it. None when
    the sample does not have both relevant and irrelevant pairs."""
    rng = np.random.default_rng(store.settings.seed)
    categories = [p.category for p in sample.products]
    try:
        image, method, pairs = fit_image(sample.vectors, categories, sample.keys, neighbours, rng)
    except ValueError as exc:
        logger.warning("%s: no calibration (%s): hits carry no match", store.name, exc)
        return None
    counts = {"image": pairs}
    head = _head_sha(store)
    text = text_map(store.text_encoder, store.head, store.calibration, head, [p.title for p in sample.products],
                    sample.vectors, categories, rng, counts)
    cal = Calibration(image=image, text=text, head=head, index_built_at=live.info.built_at,
                      generation=live.generation, method=method, pairs=counts, fitted_at=now_iso())
    save(cal)
    logger.info("%s: calibration fitted (%s pairs, image midpoint %.3f%s)", store.name, method, image.midpoint,
                f", text midpoint {text.midpoint:.3f}" if text else "")
    return cal
