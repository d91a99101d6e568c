"""Projection-head training on frozen embeddings: batch-hard triplet loss over balanced P x K batches.

torch is imported inside functions so that importing this module (and the CLI) stays fast.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from core.config import Settings

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

_MIN_IMPROVEMENT = 1e-5  # a validation loss this much lower counts as better (not float noise)
_MAX_VAL_BATCHES = 50


@dataclass(frozen=True)
class TrainConfig:
    """The knobs of one training run (built from Settings; tests build it directly)."""

    head: str = "linear"
    margin: float = 0.2
    epochs: int = 60
    patience: int = 6
    lr: float = 1e-3
    weight_decay: float = 1e-4
    categories_per_batch: int = 16
    per_category: int = 4
    seed: int = 0
    device: str = "cpu"

    @classmethod
    def from_settings(cls, settings: Settings, device: str = "cpu") -> TrainConfig:
        return cls(head=settings.finetune_head, margin=settings.finetune_margin, epochs=settings.finetune_epochs,
                   patience=settings.finetune_patience, lr=settings.finetune_lr,
                   weight_decay=settings.finetune_weight_decay, categories_per_batch=settings.finetune_batch_categories,
                   per_category=settings.finetune_batch_per_category, seed=settings.seed, device=device)


@dataclass
class FitResult:
    """The best head found (numpy layers in core.head's layout) and how training went."""

    weights: list[np.ndarray]
    biases: list[np.ndarray]
    best_epoch: int
    epochs_run: int
    best_val_loss: float
    initial_val_loss: float
    history: list[dict[str, float]] = field(default_factory=list)


def build_head(kind: str, dim: int) -> torch.nn.Sequential:
    """A head that starts as the identity, so training begins exactly at the zero-shot embeddings.

    The MLP's identity uses relu(x) - relu(-x) = x with a hidden layer of width 2 * dim.
    """
    import torch

    eye = torch.eye(dim)
    if kind == "linear":
        layer = torch.nn.Linear(dim, dim)
        with torch.no_grad():
            layer.weight.copy_(eye)
            layer.bias.zero_()
        return torch.nn.Sequential(layer)
    if kind != "mlp":
        raise ValueError(f"unknown head kind {kind!r}")
    first, second = torch.nn.Linear(dim, 2 * dim), torch.nn.Linear(2 * dim, dim)
    with torch.no_grad():
        first.weight.copy_(torch.cat([eye, -eye], dim=0))
        second.weight.copy_(torch.cat([eye, -eye], dim=1))
        first.bias.zero_()
        second.bias.zero_()
    return torch.nn.Sequential(first, torch.nn.ReLU(), second)


def head_layers(module: torch.nn.Sequential) -> tuple[list[np.ndarray], list[np.ndarray]]:
    import torch

    linears = [m for m in module if isinstance(m, torch.nn.Linear)]
    return ([m.weight.detach().float().cpu().numpy().copy() for m in linears],
            [m.bias.detach().float().cpu().numpy().copy() for m in linears])


def batch_hard_triplet_loss(embeddings: torch.Tensor, labels: torch.Tensor, margin: float) -> torch.Tensor:
    """Mean over anchors of relu(d(hardest positive) - d(hardest negative) + margin), unit-vector
    euclidean distances; anchors without a positive or a negative in the batch are left out."""
    import torch

    emb = torch.nn.functional.normalize(embeddings, dim=1)
    dist = torch.sqrt(torch.clamp(2.0 - 2.0 * emb @ emb.T, min=1e-12))
    same = labels[:, None] == labels[None, :]
    pos = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    hardest_pos = torch.where(pos, dist, torch.zeros_like(dist)).max(dim=1).values
    hardest_neg = torch.where(~same, dist, torch.full_like(dist, math.inf)).min(dim=1).values
    valid = pos.any(dim=1) & (~same).any(dim=1)
    if not bool(valid.any()):
        return dist.sum() * 0.0
    return torch.relu(hardest_pos - hardest_neg + margin)[valid].mean()


def pk_batches(labels: np.ndarray, p: int, k: int, rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """``count`` batches of P categories x K products (drawn with replacement only when a category
    has fewer than K); only categories with at least two products can take part."""
    by_cat = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    cats = np.array([c for c, rows in by_cat.items() if len(rows) >= 2])
    if len(cats) < 2:
        raise ValueError("P x K batches need at least two categories with two products each")
    p = min(p, len(cats))
    batches = []
    for _ in range(count):
        chosen = rng.choice(cats, size=p, replace=False)
        batches.append(np.concatenate([rng.choice(by_cat[c], size=k, replace=len(by_cat[c]) < k) for c in chosen]))
    return batches


def _mean_loss(model: Any, x: torch.Tensor, y: torch.Tensor, batches: list[np.ndarray], margin: float) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        losses = [float(batch_hard_triplet_loss(model(x[b]), y[b], margin)) for b in batches]
    return float(np.mean(losses))


def _train_epoch(model: Any, opt: Any, x: torch.Tensor, y: torch.Tensor, batches: list[np.ndarray],
                 margin: float) -> float:
    model.train()
    losses = []
    for b in batches:
        opt.zero_grad(set_to_none=True)
        loss = batch_hard_triplet_loss(model(x[b]), y[b], margin)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def fit_head(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, config: TrainConfig,
             *, on_improve: Callable[[int, list, list], None] | None = None, progress: bool = False) -> FitResult:
    """Train with Adam (+ weight decay) and stop early when validation loss stalls for ``patience``
    epochs; return the best epoch's head (epoch 0 = the identity, i.e. zero-shot)."""
    import torch
    from tqdm import tqdm

    torch.manual_seed(config.seed)
    rng, val_rng = np.random.default_rng(config.seed), np.random.default_rng(config.seed + 1)
    dev = torch.device(config.device)
    x, y = torch.from_numpy(np.ascontiguousarray(x_train, np.float32)).to(dev), torch.from_numpy(y_train).to(dev)
    xv, yv = torch.from_numpy(np.ascontiguousarray(x_val, np.float32)).to(dev), torch.from_numpy(y_val).to(dev)
    batch = config.categories_per_batch * config.per_category
    val_batches = pk_batches(y_val, config.categories_per_batch, config.per_category, val_rng,
                             min(_MAX_VAL_BATCHES, max(1, math.ceil(len(y_val) / batch))))
    model = build_head(config.head, x.shape[1]).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    best_loss = initial = _mean_loss(model, xv, yv, val_batches, config.margin)
    best_epoch, best_state, history, stale = 0, head_layers(model), [], 0
    bar = tqdm(range(1, config.epochs + 1), desc="fine-tuning", unit="epoch", disable=not progress)
    for epoch in bar:
        batches = pk_batches(y_train, config.categories_per_batch, config.per_category, rng,
                             max(1, math.ceil(len(y_train) / batch)))
        train_loss = _train_epoch(model, opt, x, y, batches, config.margin)
        val_loss = _mean_loss(model, xv, yv, val_batches, config.margin)
        history.append({"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss})
        bar.set_postfix(train=f"{train_loss:.4f}", val=f"{val_loss:.4f}", best=best_epoch)
        if val_loss < best_loss - _MIN_IMPROVEMENT:
            best_loss, best_epoch, best_state, stale = val_loss, epoch, head_layers(model), 0
            if on_improve:
                on_improve(epoch, *best_state)
        else:
            stale += 1
            if stale >= config.patience:
                logger.info("early stop at epoch %d (best %d, val loss %.4f)", epoch, best_epoch, best_loss)
                break
    bar.close()
    logger.info("trained %d epochs: validation loss %.4f at start, best %.4f at epoch %d", len(history), initial,
                best_loss, best_epoch)
    return FitResult(best_state[0], best_state[1], best_epoch, len(history), best_loss, initial, history)
