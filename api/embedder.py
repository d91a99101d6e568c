"""Query embedding: one CLIP encoder and micro-batcher per backbone; decoding runs in worker threads,
every torch call on the batcher's one thread."""

from __future__ import annotations

import asyncio
import logging
from contextlib import ExitStack
from typing import TYPE_CHECKING

import numpy as np
from anyio import to_thread

from core.errors import BadImageError, BadRequestError
from core.types import Embeddings
from utils.images import ImageDecodeError, decode_image

from api.batcher import MicroBatcher

if TYPE_CHECKING:
    from PIL import Image

    from core.config import Settings
    from core.encoder import ClipEncoder
    from utils.images import ShapePolicy

logger = logging.getLogger(__name__)

MAX_BATCH = 16
MAX_WAIT_MS = 5.0


class Embedder:
    """A loaded backbone: image and text queries each go through the micro-batcher (a batch holds one kind)."""

    def __init__(self, encoder: ClipEncoder, batcher: MicroBatcher) -> None:
        self.encoder = encoder
        self.backbone = encoder.backbone
        self.batcher = batcher
        batcher.fn = encoder.encode_pixels
        self._encode_texts = encoder.encode_texts  # one object: the batcher groups jobs by their function

    @classmethod
    def load(cls, settings: Settings, backbone: str) -> Embedder:
        """Start the backbone's worker thread and load the encoder on it. Raises BackboneLoadError."""
        batcher = MicroBatcher(None, name=backbone.rsplit("/", 1)[-1], max_batch=MAX_BATCH, max_wait_ms=MAX_WAIT_MS)
        batcher.start()
        try:
            encoder = batcher.call(_load_encoder, settings, backbone).result()
        except BaseException:
            batcher.stop()
            raise
        return cls(encoder, batcher)

    @property
    def dim(self) -> int:
        return self.encoder.dim

    def stop(self) -> None:
        self.batcher.stop()

    async def embed_text(self, text: str) -> np.ndarray:
        """One text query; concurrent ones share a forward pass of the text tower (micro-batched)."""
        text = text.strip()
        if not text:
            raise BadRequestError("the text query is empty")
        return np.asarray(await self.batcher.submit(text, self._encode_texts))

    def embed_images(self, images: list[Image.Image]) -> Embeddings:
        """Blocking batch embedding for admin edits (call from a worker thread, not the event loop)."""
        vectors: Embeddings = self.batcher.call(self.encoder.encode_images, images).result()
        return vectors


def _load_encoder(settings: Settings, backbone: str) -> ClipEncoder:
    import os

    import torch

    from core.encoder import ClipEncoder

    torch.set_num_threads(settings.torch_threads or os.cpu_count() or 1)  # set on the thread that runs torch
    return ClipEncoder.from_settings(settings, backbone)


def decode_query(data: bytes, *, policy: ShapePolicy, shorter_side: int | None) -> Image.Image:
    """Decode an uploaded image, turning a decode failure into BadImageError (413 for a pixel bomb,
    400 for any other shape the policy refuses, judged from the header before decoding)."""
    try:
        return decode_image(data, policy=policy, shorter_side=shorter_side)
    except ImageDecodeError as exc:
        status = 413 if exc.reason == "too many pixels" else 400
        detail = f" ({exc.detail})" if exc.detail else ""
        raise BadImageError(f"cannot use the uploaded image: {exc.reason}{detail}", status) from None


async def embed_query_image(data: bytes, embedders: list[Embedder], *, policy: ShapePolicy) -> dict[str, np.ndarray]:
    """Decode once, preprocess per backbone off the loop, then one batched forward per backbone.

    Returns backbone -> raw CLIP vector (before any head).
    """
    shorter = max(e.encoder.input_size for e in embedders)
    with ExitStack() as stack:
        for emb in embedders:
            stack.enter_context(emb.batcher.expect())
        image = await to_thread.run_sync(lambda: decode_query(data, policy=policy, shorter_side=shorter))
        pixels = await asyncio.gather(*(to_thread.run_sync(e.encoder.pixels, image) for e in embedders))
    if len(embedders) == 1:  # awaiting directly queues the job at once, with no task hop
        vectors = [await embedders[0].batcher.submit(pixels[0])]
    else:
        vectors = await asyncio.gather(*(e.batcher.submit(p) for e, p in zip(embedders, pixels, strict=True)))
    return {e.backbone: v for e, v in zip(embedders, vectors, strict=True)}
