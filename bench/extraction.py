"""Benchmark: embedding photos on this machine's CPU or GPU, our pipeline against the model's ceiling,
a DataLoader-style reference loader and the naive script, all in one run.

For each backbone (ViT-B/32-sized; with --device cuda also ViT-L/14-sized; random weights unless
IMAGESEARCH_BENCH_MODEL names a real checkpoint) and the same photo-like 1000x800 JPEGs:

- ceiling: the model alone, on a preprocessed batch already on the device (the phase's batch size),
  timed just before and just after ours in each round (their mean), so that both see the same machine;
- ours: our extraction phase from our image cache (decode, crop, resize, embed, commit, upsert);
- download: our download phase of the local JPEGs into the cache (decode, downscale, write);
- end to end: validation + download + extraction from the raw JPEGs, fresh cache and store;
- reference: a DataLoader-style loader from the raw JPEGs (cores - 1 worker processes, draft-mode
  decode, resize and crop in PIL, uint8 to the device, normalised there, the same model and dtype);
- naive: CLIPProcessor + the fp32 model, batch 16 (64 on a GPU), on the first --naive-images JPEGs.

Then, with the tiny CLIP (model cost near zero), the extraction phase's preprocessing and the download
phase on every core against one worker (preprocess_scaling, download_scaling; the whole extraction
phase's ratio too); and the build process's own CPU time per image in the extraction phase with the model
removed, as a GPU build sees a ViT-B/32 (host_ms_per_image: one build process feeds a GPU at most
1000 / that images/s, whatever the model). Medians of --repeats rounds, the paths interleaved within each
round. Prints a table and ends with one JSON line.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._common import photo_jpegs, random_clip_folder, vit_b32_folder  # noqa: E402

NAMES = {"tiny": "tiny CLIP", "b32": "ViT-B/32", "l14": "ViT-L/14"}
CORES = len(os.sched_getaffinity(0))


_START = time.monotonic()


def _progress(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", file=sys.stderr, flush=True)


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _median_rate(times: list[float], images: int) -> float:
    return images / float(np.median(times))


@dataclass
class Catalogue:
    """One model's catalogue of the bench's JPEGs under ``root``, with a loaded encoder."""

    root: Path
    files: list[Path]
    model_dir: Path
    device: str
    overrides: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from core.config import load_settings
        from core.encoder import ClipEncoder
        from core.model_config import ModelSpec

        self.settings = load_settings(root=self.root, clip_model=str(self.model_dir), device=self.device,
                                      **self.overrides)
        self.spec = ModelSpec(name="bench")
        self.paths = self.spec.paths(self.settings)
        self.encoder: Any = ClipEncoder.from_settings(self.settings)
        self.cpu_seconds = 0.0
        data = self.paths.data
        data.mkdir(parents=True, exist_ok=True)
        for f in self.files:
            target = data / f.name
            if not target.exists():
                try:
                    os.link(f, target)
                except OSError:
                    shutil.copy(f, target)
        with open(data / "products.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["shopify_product_id", "title", "images", "category"])
            writer.writerows([f.stem, f.stem, f.name, "photo"] for f in self.files)

    def variant(self, **overrides: Any) -> Catalogue:
        """The same catalogue and encoder under other settings."""
        other = object.__new__(Catalogue)
        other.__dict__.update(self.__dict__)
        other.settings = self.settings.model_copy(update=overrides)
        return other

    def clear(self, *, cache: bool) -> None:
        for folder in (self.paths.models, self.paths.checkpoints, *([self.paths.image_cache] if cache else [])):
            shutil.rmtree(folder, ignore_errors=True)

    def run(self, phases: Sequence[Any], ids: Sequence[str] = ()) -> tuple[float, np.ndarray | None]:
        """Seconds the phases took, and the raw CLIP vectors of ``ids`` afterwards."""
        from pipeline.base import PipelineContext

        ctx = PipelineContext(settings=self.settings, spec=self.spec, progress=False, _encoder=self.encoder)
        try:
            start, cpu = time.perf_counter(), time.process_time()
            for phase in phases:
                phase.run(ctx)
            seconds = time.perf_counter() - start
            self.cpu_seconds = time.process_time() - cpu  # this process's threads only, never its workers
            return seconds, ctx.store().vectors(list(ids), clip=True) if ids else None
        finally:
            ctx.close()

    def cached(self) -> Callable[[], float]:
        """Validation and download once; then a callable that times the extraction phase from that cache."""
        from pipeline.download import DownloadPhase
        from pipeline.extraction import ExtractionPhase
        from pipeline.validation import ValidationPhase

        self.clear(cache=True)
        self.run([ValidationPhase(), DownloadPhase()])
        snapshot = self.root / "snapshot"
        shutil.rmtree(snapshot, ignore_errors=True)
        shutil.copytree(self.paths.models, snapshot)

        def extraction() -> float:
            self.clear(cache=False)
            shutil.copytree(snapshot, self.paths.models)
            return self.run([ExtractionPhase()])[0]  # and self.cpu_seconds: the build process's own CPU time

        return extraction

    def download(self) -> float:
        from pipeline.download import DownloadPhase
        from pipeline.validation import ValidationPhase

        self.clear(cache=True)
        self.run([ValidationPhase()])
        return self.run([DownloadPhase()])[0]

    def end_to_end(self, ids: Sequence[str]) -> tuple[float, np.ndarray]:
        from pipeline.download import DownloadPhase
        from pipeline.extraction import ExtractionPhase
        from pipeline.validation import ValidationPhase

        self.clear(cache=True)
        seconds, vectors = self.run([ValidationPhase(), DownloadPhase(), ExtractionPhase()], ids)
        assert vectors is not None
        return seconds, vectors


def _ceiling(encoder: Any, batch: int, images: int) -> Callable[[], float]:
    """Seconds per image of the model alone on a random preprocessed batch already on the device."""
    import torch

    crop = encoder.input_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, crop, crop, generator=gen).to(encoder.device, encoder.dtype)
    iters = max(2, math.ceil(images / batch))

    def run() -> float:
        _sync(encoder.device)
        start = time.perf_counter()
        with torch.inference_mode():
            for _ in range(iters):
                encoder.model.get_image_features(pixel_values=x)
        _sync(encoder.device)
        return (time.perf_counter() - start) / (iters * batch)

    run()  # warm-up
    return run


class _Photos:
    """The reference loader's dataset: draft-mode decode, shorter side to ``size`` (bicubic), centre crop,
    uint8 HWC, as a torchvision-free DataLoader script would do it."""

    def __init__(self, files: list[Path], size: int, crop: int) -> None:
        self.files, self.size, self.crop = files, size, crop

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        import torch
        from PIL import Image

        with Image.open(self.files[i]) as raw:
            raw.draft("RGB", (self.size, self.size))
            rgb = raw.convert("RGB")
        w, h = rgb.size
        scale = self.size / min(w, h)
        resized = rgb.resize((round(w * scale), round(h * scale)), Image.Resampling.BICUBIC)
        left, top = (resized.width - self.crop) // 2, (resized.height - self.crop) // 2
        square = resized.crop((left, top, left + self.crop, top + self.crop))
        return torch.from_numpy(np.asarray(square).copy())


def _reference(model_dir: Path, encoder: Any, files: list[Path], batch: int) -> Callable[[], float]:
    """Seconds for a DataLoader-style pass over the raw JPEGs with the same model (workers kept alive)."""
    import torch
    from torch.utils.data import DataLoader

    config = json.loads((model_dir / "preprocessor_config.json").read_text())
    size = config["size"]["shortest_edge"] if isinstance(config["size"], dict) else config["size"]
    crop = config["crop_size"]["height"] if isinstance(config["crop_size"], dict) else config["crop_size"]
    device = encoder.device
    mean = torch.tensor(config["image_mean"], device=device).reshape(1, 3, 1, 1)
    std = torch.tensor(config["image_std"], device=device).reshape(1, 3, 1, 1)
    dataset: Any = _Photos(files, size, crop)
    loader: Any = DataLoader(dataset, batch_size=batch, num_workers=max(1, CORES - 1),
                        pin_memory=device == "cuda", persistent_workers=True, prefetch_factor=4)

    def run() -> float:
        start = time.perf_counter()
        out = []
        with torch.inference_mode():
            for images in loader:
                x = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
                x = ((x - mean) / std).to(encoder.dtype)
                feats = encoder.model.get_image_features(pixel_values=x)
                out.append(feats if isinstance(feats, torch.Tensor) else feats.pooler_output)
            torch.cat(out).float().cpu()
        return time.perf_counter() - start

    run()  # warm-up: the workers start
    return run


def _naive(model_dir: Path, files: list[Path], device: str) -> Callable[[], tuple[float, np.ndarray]]:
    """The naive script: CLIPProcessor (full decode) + the fp32 model; seconds and normalised vectors."""
    import torch
    from PIL import Image
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    processor = CLIPProcessor.from_pretrained(model_dir)
    model = CLIPModel.from_pretrained(model_dir).eval().to(device)
    batch = 64 if device == "cuda" else 16

    def run() -> tuple[float, np.ndarray]:
        start = time.perf_counter()
        out = []
        for i in range(0, len(files), batch):
            images = [Image.open(f).convert("RGB") for f in files[i:i + batch]]
            inputs = processor(images=images, return_tensors="pt").to(device)
            with torch.no_grad():
                feats = model.get_image_features(**inputs)
            feats = feats if isinstance(feats, torch.Tensor) else feats.pooler_output
            out.append(feats.float().cpu().numpy())
        vectors = np.concatenate(out)
        return time.perf_counter() - start, vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    with torch.no_grad():  # warm-up on one image: lazy init, allocator, kernels
        model.get_image_features(**processor(images=[Image.open(files[0]).convert("RGB")],
                                             return_tensors="pt").to(device))
    return run


def bench_model(shape: str, files: list[Path], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every path for one backbone; its figures (images/s) and the cosine check."""
    if shape == "tiny":
        from utils.tiny_clip import write_tiny_clip

        model_dir = write_tiny_clip(work / "tiny")
    elif shape == "b32":
        model_dir = vit_b32_folder(work / "vit-b32") if args.device == "cpu" else random_clip_folder(
            work / "vit-b32", "b32", args.device)
    else:
        model_dir = random_clip_folder(work / f"vit-{shape}", shape, args.device)
    cat = Catalogue(work / f"root-{shape}", files, model_dir, args.device)
    batch = cat.settings.batch_size or cat.encoder.default_batch
    subset = files[:args.naive_images]
    ids = [f.stem for f in subset]
    ceiling = _ceiling(cat.encoder, batch, len(files))
    extraction = cat.cached()
    reference = _reference(model_dir, cat.encoder, files, batch)
    naive = _naive(model_dir, subset, args.device)
    cat.end_to_end(ids)  # warm-up of our path (first-call overheads)
    _progress(f"{NAMES[shape]}: loaded and warmed up")
    times: dict[str, list[float]] = {k: [] for k in ("ceiling", "ours", "download", "e2e", "reference", "naive")}
    ours_vectors = naive_vectors = np.zeros((0, 1))
    for round_no in range(1, args.repeats + 1):
        before = ceiling() * len(files)
        times["ours"].append(extraction())
        times["ceiling"].append((before + ceiling() * len(files)) / 2)
        times["download"].append(cat.download())
        e2e, ours_vectors = cat.end_to_end(ids)
        times["e2e"].append(e2e)
        times["reference"].append(reference())
        naive_s, naive_vectors = naive()
        times["naive"].append(naive_s * len(files) / len(subset))
        _progress(f"{NAMES[shape]}: round {round_no}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    rates = {k: _median_rate(v, len(files)) for k, v in times.items()}
    # each round's ours against the ceiling bracketing it: a shared machine's load moves both alike
    rounds = [c / o for c, o in zip(times["ceiling"], times["ours"], strict=True)]
    by_batch = {}
    for b in args.ceiling_batches:
        run = _ceiling(cat.encoder, b, len(files))
        by_batch[b] = round(1 / float(np.median([run() for _ in range(args.repeats)])), 1)
    min_cos = float(np.min(np.sum(ours_vectors * naive_vectors, axis=1)))
    return {"model": NAMES[shape], "precision": cat.encoder.precision_name, "batch": batch,
            "ceiling_images_per_s": rates["ceiling"], "ours_images_per_s": rates["ours"],
            "utilisation": float(np.median(rounds)), "utilisation_rounds": rounds,
            "download_images_per_s": rates["download"],
            "end_to_end_images_per_s": rates["e2e"], "reference_images_per_s": rates["reference"],
            "naive_images_per_s": rates["naive"], "ratio": rates["ours"] / rates["naive"],
            "end_to_end_vs_reference": rates["e2e"] / rates["reference"],
            "end_to_end_vs_naive": rates["e2e"] / rates["naive"], "min_cosine": min_cos,
            "ceiling_by_batch": by_batch}


def _preprocessing(cat: Catalogue, workers: int) -> Callable[[], float]:
    """Seconds per pass the extraction phase's preprocessing (``Preprocessor`` over the cache) takes for every
    cached image of ``cat``, with ``workers`` workers: the rate a phase keeps up, so the pool starts before
    the clock (once a phase, like the model's load) and the images go through it ``_PASSES`` times."""
    from pipeline.preprocess import Preprocessor

    cache = cat.paths.image_cache
    items: list[tuple[str, Path | bytes]] = [(str(p.relative_to(cache)), p) for p in sorted(cache.rglob("*.jpg"))]
    batch = cat.settings.batch_size or cat.encoder.default_batch
    batches = [items[i:i + batch] for i in range(0, len(items), batch)] * _PASSES

    def run() -> float:
        with Preprocessor[None](cat.encoder, workers, batch=batch) as pre:  # as the local executor makes it
            start = time.perf_counter()
            for _ in pre.map((b, None) for b in batches):
                pass
            return (time.perf_counter() - start) / _PASSES

    return run


_PASSES = 4


def _model_removed(encoder: Any) -> Any:
    """``encoder`` (the tiny CLIP's) as a GPU build's process sees a ViT-B/32-sized backbone, minus the model: the
    224 px view left at its decoded size for the device to resize, the GPU's batch size, each batch copied once
    as into pinned memory, and no forward pass (every vector the same unit vector)."""
    import copy
    import dataclasses

    import torch

    from core.encoder import DEFAULT_BATCH, l2_normalize, stack

    fake = copy.copy(encoder)
    fake._pre = dataclasses.replace(encoder._pre, size=224, crop=224)
    fake.resize_on_device, fake.default_batch = True, DEFAULT_BATCH["cuda"]
    unit = l2_normalize(np.ones((1, encoder.dim), dtype=np.float32))
    blocks: dict[tuple[int, ...], torch.Tensor] = {}

    def reused(shape: tuple[int, ...], **_: Any) -> torch.Tensor:
        """On a CPU, a block used before. CUDA's pinned staging memory comes from torch's caching host allocator,
        so a GPU build copies each batch into blocks it has used before; a fresh CPU block each batch would add
        page faults a GPU build does not pay (measured here: 0.28 against 0.05 ms an image of 384 px). Nothing
        reads these pixels."""
        if shape not in blocks:
            blocks[shape] = torch.empty(shape, dtype=torch.uint8)
        return blocks[shape]

    # the staging copy: pinned on CUDA, as a GPU build makes it
    fake.stage = lambda pixels: stack(list(pixels), pin=encoder.pin, empty=None if encoder.pin else reused)
    fake.encode_staged = lambda staged: np.repeat(unit, staged.size, axis=0)
    return fake


def bench_host(files: list[Path], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """What the build process itself spends per image in the extraction phase on a GPU machine, the model
    removed (``_model_removed``): its own CPU time (its threads; the preprocessing workers are other processes),
    so 1000 / that is the most images/s one build process can feed a GPU whatever the model, on any machine."""
    from utils.tiny_clip import write_tiny_clip

    cat = Catalogue(work / "root-host", files, write_tiny_clip(work / "tiny"), args.device)
    cat.encoder = _model_removed(cat.encoder)
    extraction = cat.cached()
    extraction()  # warm-up
    walls, cpus = [], []
    for _ in range(args.repeats):
        walls.append(extraction())
        cpus.append(cat.cpu_seconds)
    host_ms = 1000 * float(np.median(cpus)) / len(files)
    return {"images": len(files), "host_ms_per_image": host_ms, "host_ceiling_images_per_s": 1000 / host_ms,
            "host_images_per_s": _median_rate(walls, len(files))}


def bench_scaling(files: list[Path], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The tiny CLIP's extraction preprocessing and download phase on every core against one worker (and the
    whole extraction phase, which adds the model and the store's writes)."""
    from utils.tiny_clip import write_tiny_clip

    cat = Catalogue(work / "root-scaling", files, write_tiny_clip(work / "tiny"), args.device)
    one = cat.variant(preprocess_workers=1, download_workers=1)
    extraction_all, extraction_one = cat.cached(), one.cached()
    pre_all, pre_one = _preprocessing(cat, CORES), _preprocessing(cat, 1)
    extraction_all(), extraction_one(), pre_all(), pre_one()  # warm-up
    runs = {"pre_all": pre_all, "pre_one": pre_one, "ext_all": extraction_all, "ext_one": extraction_one,
            "dl_all": cat.download, "dl_one": one.download}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.repeats):
        for key, run in runs.items():
            times[key].append(run())
    rates = {k: _median_rate(v, len(files)) for k, v in times.items()}
    return {"images": len(files), "preprocess_all": rates["pre_all"], "preprocess_one": rates["pre_one"],
            "extraction_all": rates["ext_all"], "extraction_one": rates["ext_one"],
            "download_all": rates["dl_all"], "download_one": rates["dl_one"],
            "preprocess_scaling": rates["pre_all"] / rates["pre_one"],
            "extraction_scaling": rates["ext_all"] / rates["ext_one"],
            "download_scaling": rates["dl_all"] / rates["dl_one"]}


def _table(results: list[dict[str, Any]], scaling: dict[str, Any] | None, host: dict[str, Any] | None,
           args: argparse.Namespace, images: int) -> str:
    def row(label: str, key: str, fmt: str = "{:,.0f}") -> str:
        return f"| {label} | " + " | ".join(fmt.format(r[key]) for r in results) + " |"

    naive_batch = 64 if args.device == "cuda" else 16
    lines = [f"{images} photo-like 1000x800 JPEGs, device {args.device}, {CORES} cores, "
             f"{results[0]['precision']}, medians of {args.repeats}", "",
             "| images/s | " + " | ".join(r["model"] for r in results) + " |",
             "|---|" + "---|" * len(results),
             row(f"model only (batch {results[0]['batch']}, input already on the device)", "ceiling_images_per_s"),
             row("ours: extraction phase from the cache", "ours_images_per_s"),
             row("utilisation (ours / model only, median of the rounds' ratios)", "utilisation", "{:.2f}"),
             row("ours: download phase (local JPEGs into the cache)", "download_images_per_s"),
             row("ours end to end (validation + download + extraction)", "end_to_end_images_per_s"),
             row(f"DataLoader-style reference ({max(1, CORES - 1)} workers, draft decode, uint8, "
                 "normalise on the device)", "reference_images_per_s"),
             row("end to end / reference", "end_to_end_vs_reference", "{:.2f}"),
             row(f"naive CLIPProcessor + fp32 (batch {naive_batch}, {args.naive_images} images)",
                 "naive_images_per_s"),
             row("ours (extraction) / naive", "ratio", "{:.1f}"),
             row("ours end to end / naive", "end_to_end_vs_naive", "{:.1f}"),
             row("min cosine, ours vs naive fp32", "min_cosine", "{:.5f}")]
    for r in results:
        if len(r["ceiling_by_batch"]) > 1:
            lines.append(f"model only by batch, {r['model']}: " + ", ".join(
                f"{b}: {v:,.0f}" for b, v in r["ceiling_by_batch"].items()))
    if scaling:
        lines += ["", f"tiny CLIP, {scaling['images']} images, {CORES} workers vs one (images/s):",
                  f"- extraction's preprocessing {scaling['preprocess_all']:,.0f} vs "
                  f"{scaling['preprocess_one']:,.0f}: preprocess_scaling {scaling['preprocess_scaling']:.2f}x",
                  f"- download phase {scaling['download_all']:,.0f} vs {scaling['download_one']:,.0f}: "
                  f"download_scaling {scaling['download_scaling']:.2f}x",
                  f"- whole extraction phase {scaling['extraction_all']:,.0f} vs {scaling['extraction_one']:,.0f}: "
                  f"{scaling['extraction_scaling']:.2f}x"]
    if host:
        lines += ["", f"host side, the model removed (a GPU build's ViT-B/32 view and batch, {host['images']} images):",
                  f"- host ms per image in the build process {host['host_ms_per_image']:.3f}: at most "
                  f"{host['host_ceiling_images_per_s']:,.0f} images/s from one build process, whatever the model",
                  f"- the extraction phase with the model removed: {host['host_images_per_s']:,.0f} images/s "
                  f"({CORES} workers)"]
    return "\n".join(lines)


def _rounded(obj: Any) -> Any:
    """Floats to 3 decimals (5 for a cosine), through dicts and lists."""
    if isinstance(obj, dict):
        return {str(k): (round(v, 5) if k == "min_cosine" else _rounded(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_rounded(v) for v in obj]
    return round(obj, 3) if isinstance(obj, float) else obj


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--images", type=int, help="raw JPEGs (default 128 on cpu, 4096 on cuda)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", help="comma-separated: tiny, b32, l14 (default b32 on cpu, b32,l14 on cuda)")
    parser.add_argument("--naive-images", type=int, help="JPEGs the naive script embeds (default 64 on cpu, 512 "
                                                         "on cuda; its rate is scaled to the whole set)")
    parser.add_argument("--scaling-images", type=int, help="JPEGs for the tiny CLIP's scaling runs "
                                                           "(default 512 on cpu, 1024 on cuda; 0 skips them)")
    parser.add_argument("--ceiling-batches", help="batch sizes for a model-only sweep (default: none on cpu, "
                                                  "64,128,256,512 on cuda)")
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.images = args.images or (4096 if cuda else 128)
    args.models = (args.models or ("b32,l14" if cuda else "b32")).split(",")
    if unknown := set(args.models) - set(NAMES):
        parser.error(f"unknown model {sorted(unknown)}; choose from {', '.join(NAMES)}")
    args.naive_images = min(args.images, args.naive_images or (512 if cuda else 64))
    args.scaling_images = (1024 if cuda else 512) if args.scaling_images is None else args.scaling_images
    args.ceiling_batches = [int(b) for b in (args.ceiling_batches or ("64,128,256,512" if cuda else "")).split(",")
                            if b]
    return args


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("--device cuda: no CUDA device here", file=sys.stderr)
            return 1
    with tempfile.TemporaryDirectory(prefix="imagesearch-bench-") as tmp_name:
        work = Path(tmp_name)
        every = photo_jpegs(work / "raw", max(args.images, args.scaling_images))
        files = every[:args.images]
        _progress(f"{len(every)} JPEGs made")
        results = []
        for shape in args.models:
            results.append(bench_model(shape, files, work, args))
            _progress(f"{NAMES[shape]}: {json.dumps(_rounded(results[-1]))}")
        scaling = bench_scaling(every[:args.scaling_images], work, args) if args.scaling_images else None
        host = bench_host(every[:args.scaling_images], work, args) if args.scaling_images else None
    print(_table(results, scaling, host, args, len(files)))
    first = results[0]
    summary = {"benchmark": "extraction", "device": args.device, "cores": CORES, "images": len(files),
               "repeats": args.repeats, "load": round(os.getloadavg()[0], 2),
               **first,
               "preprocess_scaling": scaling["preprocess_scaling"] if scaling else None,
               "download_scaling": scaling["download_scaling"] if scaling else None,
               "host_ms_per_image": host["host_ms_per_image"] if host else None,
               "host_ceiling_images_per_s": host["host_ceiling_images_per_s"] if host else None,
               "scaling": scaling, "host": host, "models": results}
    print(json.dumps(_rounded(summary)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
