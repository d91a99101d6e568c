"""A merchant at the terminal: run_training.py's summary when images fail, rerunning after fixing them,
hints for a misplaced CSV or a typo, and --list. Every test runs the real CLI with the tiny CLIP."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from core.config import PROJECT_ROOT
from tests.fake_images import jpeg_bytes

pytestmark = pytest.mark.slow

CSV = ("id,title,images,category\n"
       "T1,Red scarf,images/t1.jpg,scarves\n"
       "T2,Blue scarf,images/t2.jpg,scarves\n"
       "T3,Green rug,images/t3.jpg|images/t3b.jpg,rugs\n"
       "T4,Grey rug,images/t4.jpg,rugs\n"
       "T5,,images/t5.jpg,rugs\n")


def _cli(root: Path, tiny_clip: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMAGESEARCH_ROOT": str(root), "IMAGESEARCH_CLIP_MODEL": str(tiny_clip),
           "IMAGESEARCH_TORCH_THREADS": "1"}
    return subprocess.run([sys.executable, str(PROJECT_ROOT / "run_training.py"), *args, "--no-progress"], env=env,
                          capture_output=True, text=True, timeout=240, cwd=root)


def _errors(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip() and "torchvision" not in line]


def _textiles(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "data" / "textiles").mkdir(parents=True)
    (root / "data" / "textiles" / "products.csv").write_text(CSV)
    return root


def _copy_images(root: Path, *names: str) -> None:
    folder = root / "data" / "textiles" / "images"
    folder.mkdir(exist_ok=True)
    for i, name in enumerate(names):
        (folder / f"{name}.jpg").write_bytes(jpeg_bytes(200, 150, seed=i))


def test_summary_prints_when_nothing_is_usable_and_fixing_the_images_fixes_the_build(tmp_path, tiny_clip):
    root = _textiles(tmp_path)
    failed = _cli(root, tiny_clip, "textiles")

    assert failed.returncode == 1
    assert _errors(failed) == ["error: model 'textiles': no product has a usable image; nothing to index"]
    out = failed.stdout
    assert "feature_extraction  failed" in out and "image_download: file not found x5" in out
    assert ("e.g. row 2: images/t1.jpg\n      e.g. row 3: images/t2.jpg\n      e.g. row 4: images/t3.jpg\n  "
            in out)  # three examples, each with the CSV row that names it
    assert "images/t4.jpg" not in out
    assert "feature_extraction: no usable image x4" in out and "e.g. row 2: T1" in out
    assert "data_validation: empty title x1" in out and "e.g. row 6: T5" in out
    assert "stopped: model 'textiles': no product has a usable image" in out
    assert "local image paths are relative to" in out and "run the same command again" in out
    models = root / "models" / "textiles"
    assert f"reports: {models / 'validation_report.json'}, {models / 'download_report.json'}" in out

    _copy_images(root, "t1", "t2", "t3", "t4")  # the merchant copies the images in and runs the same command
    fixed = _cli(root, tiny_clip, "textiles")

    assert fixed.returncode == 0, fixed.stderr
    lines = {line.split()[0]: line.split()[1] for line in fixed.stdout.splitlines()[3:7]}
    assert lines == {"data_validation": "skipped", "image_download": "ran", "feature_extraction": "ran",
                     "index_building": "ran"}
    assert "image_download: file not found x1" in fixed.stdout and "e.g. row 4: images/t3b.jpg" in fixed.stdout
    assert "index ready" in fixed.stdout and "yes (4)" in _cli(root, tiny_clip, "--list").stdout

    again = _cli(root, tiny_clip, "textiles")
    assert again.returncode == 0 and again.stdout.count("skipped") == 4


def test_hints_for_a_misplaced_csv_and_a_typo(tmp_path, tiny_clip):
    root = _textiles(tmp_path)
    (root / "data" / "products.csv").write_text(CSV)
    (root / "data" / "rugs").mkdir()
    (root / "data" / "rugs" / "Rugs export.csv").write_text(CSV)
    (root / "data" / "lamps").mkdir()
    cases = {
        "products": "unknown model 'products'; available models: general, shirts, textiles; found "
                    "data/products.csv: put the CSV at data/products/products.csv (the folder name is the model name)",
        "textile": "did you mean 'textiles'?",
        "rugs": "found data/rugs/Rugs export.csv, data/products.csv: put the CSV at data/rugs/products.csv",
        "lamps": "found data/products.csv: put the CSV at data/lamps/products.csv",
    }
    for model, needle in cases.items():
        proc = _cli(root, tiny_clip, model)
        assert proc.returncode == 1 and len(_errors(proc)) == 1 and needle in _errors(proc)[0], proc.stderr
    (root / "data" / "products.csv").unlink()
    lamps = _cli(root, tiny_clip, "lamps")
    assert "data/lamps has no products.csv: put the CSV at data/lamps/products.csv" in _errors(lamps)[0]
    (root / "data" / "general").mkdir()
    general = _cli(root, tiny_clip, "general")  # a built-in model without its CSV
    assert general.returncode == 1 and "put the CSV at data/general/products.csv" in _errors(general)[0]


def test_semicolon_csv_builds_and_a_missing_column_lists_the_aliases(tmp_path, tiny_clip):
    root = _textiles(tmp_path)
    _copy_images(root, "t1", "t2", "t3", "t3b", "t4", "t5")
    (root / "data" / "textiles" / "products.csv").write_text(CSV.replace(",", ";").replace("T5;;", "T5;Rug;"))
    ok = _cli(root, tiny_clip, "textiles")
    assert ok.returncode == 0 and "delimiter=semicolon" in ok.stdout and "failed by reason" not in ok.stdout

    (root / "data" / "textiles" / "products.csv").write_text("sku;name;picture\n1;Mug;a.jpg\n")
    bad = _cli(root, tiny_clip, "textiles")
    assert bad.returncode == 1 and "accepted names: images: images / image_urls" in _errors(bad)[0]


def test_list_shows_failures_backbone_and_a_changed_csv(tmp_path, tiny_clip):
    root = _textiles(tmp_path)
    _copy_images(root, "t1", "t2", "t3")
    assert _cli(root, tiny_clip, "textiles").returncode == 0
    listing = _cli(root, tiny_clip, "--list").stdout.splitlines()
    header = listing[0].split()
    assert header[:6] == ["model", "name", "csv", "products", "images", "cached"] and "backbone" in header
    row = next(line for line in listing if line.startswith("textiles"))
    assert "1 row, 2 images" in row and tiny_clip.name in row and " yes " in row and "yes (3)" in row
    assert not any("changed" in line for line in listing)

    csv = root / "data" / "textiles" / "products.csv"
    csv.write_text(csv.read_text().replace("Red scarf", "Crimson scarf"))
    listing = _cli(root, tiny_clip, "--list").stdout
    assert "textiles: CSV changed since the last build; run `python run_training.py textiles`" in listing
    assert " changed " in next(line for line in listing.splitlines() if line.startswith("textiles"))
