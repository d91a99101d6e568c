"""Why this match: Grad-CAM of the query-hit cosine similarity on the input of the last vision block.

One forward pass over the pair (query, hit) with autograd on, one backward of their cosine
similarity, and each image's map is the ReLU of its activations weighted by the gradient averaged
over positions. The last block's *input* is used because a CLIP ViT pools only the class token
after the last block: the patch tokens of the last block's output get no gradient at all. The
activations may be ViT tokens (batch, tokens, channels; leading class/register tokens dropped) or a
convolutional map (batch, channels, h, w), so any CLIP-family tower whose last block is reachable works.
torch is imported inside functions so that importing this module stays cheap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from core.encoder import ClipEncoder

Grid = np.ndarray  # (h, w) float32 in [0, 1]


@dataclass(frozen=True)
class Explanation:
    query: Grid
    hit: Grid
    score: float  # cosine similarity of the two CLIP image embeddings

    def to_json(self) -> dict[str, Any]:
        return {"score": round(self.score, 6), "query_grid": _rounded(self.query), "hit_grid": _rounded(self.hit)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Explanation:
        return cls(query=np.asarray(data["query_grid"], dtype=np.float32),
                   hit=np.asarray(data["hit_grid"], dtype=np.float32), score=float(data["score"]))


def _rounded(grid: Grid) -> list[list[float]]:
    return [[round(float(v), 4) for v in row] for row in grid]


def _spatial(acts: torch.Tensor) -> torch.Tensor:
    """Activations as (batch, h, w, channels)."""
    if acts.dim() == 4:  # a convolutional map: (batch, channels, h, w)
        return acts.permute(0, 2, 3, 1)
    tokens = acts.shape[1]
    side = math.isqrt(tokens)
    extra = tokens - side * side  # class token (and any register tokens) come first
    if side == 0 or extra < 0:
        raise ValueError(f"cannot lay {tokens} tokens out on a square grid")
    return acts[:, extra:].reshape(acts.shape[0], side, side, acts.shape[2])


def _cam(acts: torch.Tensor, grads: torch.Tensor) -> Grid:
    """Grad-CAM of one image: ReLU(sum_c mean-gradient_c * activation_c), scaled to [0, 1]."""
    weights = grads.mean(dim=(0, 1))
    cam = (acts * weights).sum(dim=-1).clamp(min=0).float().cpu().numpy()
    top = float(cam.max())
    return (cam / top if top > 0 else cam).astype(np.float32)


def _last_block(model: Any) -> torch.nn.Module:
    """The vision tower's last block (a ViT layer, or a ResNet stage)."""
    tower = model.vision_model
    encoder = getattr(tower, "encoder", None)
    layers = getattr(encoder, "layers", None) or getattr(encoder, "stages", None)
    if layers is None or len(layers) == 0:
        raise ValueError(f"cannot find the last block of {type(tower).__name__}")
    block: torch.nn.Module = layers[-1]
    return block


def explain_pixels(encoder: ClipEncoder, query: np.ndarray, hit: np.ndarray) -> Explanation:
    """Heat-maps for a pair of preprocessed images (uint8 HWC, as ``encoder.pixels`` returns).
    Runs torch: call it on the thread that owns the encoder."""
    import torch

    model = encoder.model
    model.requires_grad_(False)  # a graph only from the last block's input on: the rest runs as inference
    captured: list[torch.Tensor] = []

    def _leaf(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if args:
            captured.append(args[0].detach().requires_grad_())
            return (captured[-1], *args[1:]), kwargs
        captured.append(kwargs["hidden_states"].detach().requires_grad_())
        return args, {**kwargs, "hidden_states": captured[-1]}

    batch = encoder.model_input(encoder.stage([query, hit]))  # normalised on the device, in its dtype
    hook = _last_block(model).register_forward_pre_hook(_leaf, with_kwargs=True)
    try:
        with encoder.lock, torch.enable_grad():
            out = model.vision_model(pixel_values=batch)
            feats = torch.nn.functional.normalize(model.visual_projection(out.pooler_output).float(), dim=-1)
            score = (feats[0] * feats[1]).sum()
            (grads,) = torch.autograd.grad(score, captured[-1])
    finally:
        hook.remove()
    acts = captured[-1]
    acts_hw, grads_hw = _spatial(acts.detach()), _spatial(grads)
    return Explanation(query=_cam(acts_hw[0], grads_hw[0]), hit=_cam(acts_hw[1], grads_hw[1]),
                       score=float(score.detach()))


def explain_images(encoder: ClipEncoder, query: Image.Image, hit: Image.Image) -> Explanation:
    return explain_pixels(encoder, encoder.pixels(query), encoder.pixels(hit))
