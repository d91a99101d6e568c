"""The naive seed design for bench/api.py: per request CLIPProcessor + fp32 forward + FAISS flat search
with default threads. Run as ``python -m bench._naive_server PORT MODEL_DIR VECTORS.npy``.

(No ``from __future__ import annotations`` here: FastAPI must see the real UploadFile type.)
"""

import io
import sys

import faiss
import numpy as np
import torch
import uvicorn
from fastapi import FastAPI, File, UploadFile
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from bench.api import rows


def build_app(model_dir: str, vectors_path: str) -> FastAPI:
    processor = CLIPProcessor.from_pretrained(model_dir)
    model = CLIPModel.from_pretrained(model_dir).eval()
    vectors = np.load(vectors_path)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    metadata = rows(len(vectors))
    app = FastAPI()

    @app.post("/search_products/")
    def search_products(file: UploadFile = File(...), top_k: int = 10):
        image = Image.open(io.BytesIO(file.file.read())).convert("RGB")
        inputs = processor(images=image, return_tensors="pt")
        with torch.no_grad():
            out = model.get_image_features(**inputs)
        feats = (out if isinstance(out, torch.Tensor) else out.pooler_output).numpy()
        feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        scores, ids = index.search(feats.astype(np.float32), top_k)
        return {"results": [{**metadata[i], "score": float(s)} for s, i in zip(scores[0], ids[0], strict=True)]}

    @app.get("/health")
    def health():
        return {"status": "healthy"}

    return app


if __name__ == "__main__":
    port, model_dir, vectors_path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    uvicorn.run(build_app(model_dir, vectors_path), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)
