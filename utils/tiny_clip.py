"""Generate a tiny, randomly initialised CLIP checkpoint for offline tests and demos."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

_SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")
TINY_DUPLICATE_THRESHOLD = 0.99995  # folds exact copies only (distinct demo products stay below 0.9999)


def _bytes_to_unicode() -> dict[int, str]:
    """The GPT-2/CLIP byte-to-printable-character table (so every byte is one token)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _byte_level_vocab() -> dict[str, int]:
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + list(_SPECIAL_TOKENS)
    return {tok: i for i, tok in enumerate(tokens)}


def write_tiny_clip(out_dir: Path, *, embed_dim: int = 32, image_size: int = 64, seed: int = 0) -> Path:
    """Write config, random weights, image processor and byte-level tokenizer to ``out_dir``.

    The folder loads through the same ``from_pretrained`` code as a hub checkpoint.
    """
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = _byte_level_vocab()
    vocab_path = out_dir / "vocab.json"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path = out_dir / "merges.txt"
    merges_path.write_text("#version: 0.2\n", encoding="utf-8")

    text = dict(vocab_size=len(vocab), hidden_size=embed_dim, intermediate_size=embed_dim * 2,
                num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
                bos_token_id=vocab[_SPECIAL_TOKENS[0]], eos_token_id=vocab[_SPECIAL_TOKENS[1]],
                pad_token_id=vocab[_SPECIAL_TOKENS[1]])
    vision = dict(hidden_size=embed_dim, intermediate_size=embed_dim * 2, num_hidden_layers=2,
                  num_attention_heads=2, image_size=image_size, patch_size=16)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=embed_dim)
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(out_dir)

    tokenizer = CLIPTokenizer(str(vocab_path), str(merges_path), model_max_length=77)
    tokenizer.save_pretrained(out_dir)
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(out_dir)
    # Random weights put every image within cosine 0.9999 of every other, so the real near-duplicate default
    # would fold a whole catalogue into one hit: the folder says what it needs (core.model_config reads it).
    (out_dir / "imagesearch.json").write_text(json.dumps({"duplicate_threshold": TINY_DUPLICATE_THRESHOLD}) + "\n",
                                              encoding="utf-8")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder to write the checkpoint to")
    parser.add_argument("--dim", type=int, default=32, help="embedding width (default 32)")
    parser.add_argument("--image-size", type=int, default=64, help="input resolution (default 64)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = write_tiny_clip(args.out_dir, embed_dim=args.dim, image_size=args.image_size, seed=args.seed)
    print(f"tiny CLIP written to {path}; use it with IMAGESEARCH_CLIP_MODEL={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
