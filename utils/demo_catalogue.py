"""Generate the demo catalogues (data/general, data/shirts): drawn product photos plus products.csv."""

from __future__ import annotations

from typing import Any

import argparse
import csv
import functools
import json
import math
import random
import sys
from collections.abc import Callable
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

_SIZE = 320
Painter = Callable[[ImageDraw.ImageDraw, random.Random, tuple[int, int, int]], None]


def _mug(d, rng, c):
    x0, y0 = 95 + rng.randint(-8, 8), 90 + rng.randint(-8, 8)
    d.rectangle([x0, y0, x0 + 110, y0 + 140], fill=c, outline=(40, 40, 40), width=3)
    d.ellipse([x0 + 95, y0 + 35, x0 + 160, y0 + 105], outline=c, width=14)
    d.ellipse([x0, y0 - 12, x0 + 110, y0 + 12], fill=tuple(max(0, v - 50) for v in c))


def _lamp(d, rng, c):
    cx = 160 + rng.randint(-10, 10)
    d.polygon([(cx - 45, 70), (cx + 45, 70), (cx + 80, 150), (cx - 80, 150)], fill=c, outline=(30, 30, 30))
    d.rectangle([cx - 6, 150, cx + 6, 250], fill=(90, 90, 90))
    d.ellipse([cx - 55, 240, cx + 55, 270], fill=(60, 60, 60))


def _backpack(d, rng, c):
    x0 = 90 + rng.randint(-8, 8)
    d.rounded_rectangle([x0, 70, x0 + 140, 260], radius=35, fill=c, outline=(20, 20, 20), width=3)
    d.rounded_rectangle([x0 + 25, 170, x0 + 115, 240], radius=12, fill=tuple(min(255, v + 40) for v in c))
    d.arc([x0 + 35, 35, x0 + 105, 105], 180, 360, fill=(30, 30, 30), width=8)


def _sneaker(d, rng, c):
    y = 170 + rng.randint(-10, 10)
    d.polygon([(50, y), (120, y - 60), (180, y - 60), (270, y - 10), (275, y + 30), (50, y + 30)], fill=c,
              outline=(20, 20, 20))
    d.rectangle([45, y + 30, 280, y + 50], fill=(245, 245, 245), outline=(60, 60, 60))
    for i in range(4):
        d.line([(125 + 14 * i, y - 50), (140 + 14 * i, y - 20)], fill=(255, 255, 255), width=3)


def _watch(d, rng, c):
    cx, cy = 160 + rng.randint(-8, 8), 160 + rng.randint(-8, 8)
    d.rectangle([cx - 28, 20, cx + 28, 300], fill=c)
    d.ellipse([cx - 70, cy - 70, cx + 70, cy + 70], fill=(230, 230, 225), outline=(50, 50, 50), width=8)
    a = rng.uniform(0, 2 * math.pi)
    d.line([(cx, cy), (cx + 50 * math.cos(a), cy + 50 * math.sin(a))], fill=(10, 10, 10), width=5)
    d.line([(cx, cy), (cx + 35 * math.cos(a * 3), cy + 35 * math.sin(a * 3))], fill=(10, 10, 10), width=7)


def _plant(d, rng, c):
    d.polygon([(110, 200), (210, 200), (195, 285), (125, 285)], fill=c, outline=(40, 30, 20))
    for _ in range(7):
        x, y = 160 + rng.randint(-60, 60), 120 + rng.randint(-70, 50)
        d.ellipse([x - 18, y - 38, x + 18, y + 38], fill=(30 + rng.randint(0, 40), 140 + rng.randint(0, 60), 40))


def _shirt(d, rng, c, *, sleeve: int, collar: str, pattern: str):
    body = [(110, 70), (210, 70), (210 + sleeve, 70 + sleeve), (225, 110), (225, 280), (95, 280), (95, 110),
            (110 - sleeve, 70 + sleeve)]
    d.polygon(body, fill=c, outline=(30, 30, 30))
    shade = tuple(max(0, v - 70) for v in c)
    if pattern == "stripes":
        for x in range(100, 225, 18):
            d.line([(x, 80), (x, 278)], fill=shade, width=5)
    elif pattern == "checks":
        for v in range(80, 280, 24):
            d.line([(97, v), (223, v)], fill=shade, width=4)
            d.line([(v + 20, 80), (v + 20, 278)], fill=shade, width=4)
    if collar == "polo":
        d.polygon([(140, 70), (180, 70), (160, 100)], fill=(250, 250, 250), outline=shade)
        for y in (105, 125):
            d.ellipse([156, y, 164, y + 8], fill=(250, 250, 250))
    elif collar == "button":
        d.line([(160, 75), (160, 278)], fill=shade, width=3)
        for y in range(95, 270, 30):
            d.ellipse([155, y, 165, y + 10], fill=(250, 250, 250))
    elif collar == "hood":
        d.ellipse([118, 25, 202, 105], fill=shade, outline=(30, 30, 30))
        d.rectangle([130, 200, 190, 250], outline=shade, width=4)
    else:
        d.arc([135, 55, 185, 95], 0, 180, fill=shade, width=6)


_SHIRT_STYLES: dict[str, dict[str, Any]] = {
    "t-shirts": dict(sleeve=45, collar="crew"),
    "polos": dict(sleeve=40, collar="polo"),
    "button-downs": dict(sleeve=85, collar="button"),
    "hoodies": dict(sleeve=90, collar="hood"),
    "tank-tops": dict(sleeve=0, collar="crew"),
}

GENERAL: dict[str, tuple[Painter, list[str]]] = {
    "mugs": (_mug, ["Ceramic Mug", "Travel Mug", "Espresso Cup", "Tea Mug"]),
    "lamps": (_lamp, ["Desk Lamp", "Floor Lamp", "Bedside Lamp", "Reading Lamp"]),
    "backpacks": (_backpack, ["Daypack", "Laptop Backpack", "Hiking Pack", "School Bag"]),
    "sneakers": (_sneaker, ["Running Shoe", "Court Sneaker", "Trail Runner", "Canvas Sneaker"]),
    "watches": (_watch, ["Field Watch", "Dress Watch", "Diver Watch", "Chronograph"]),
    "plants": (_plant, ["Potted Fern", "Snake Plant", "Mini Cactus", "Herb Pot"]),
}
_COLOURS = {"Red": (200, 40, 40), "Blue": (40, 80, 200), "Green": (40, 150, 70), "Yellow": (230, 200, 40),
            "Black": (35, 35, 35), "White": (235, 235, 235), "Orange": (240, 130, 30), "Purple": (130, 60, 170),
            "Teal": (30, 150, 150), "Pink": (240, 130, 170), "Grey": (130, 130, 130)}


def _render(painter: Callable, rng: random.Random, colour: tuple[int, int, int], view: int) -> Image.Image:
    tint = [rng.randint(225, 255) for _ in range(3)]
    img = Image.new("RGB", (_SIZE, _SIZE), tuple(tint))
    painter(ImageDraw.Draw(img), rng, colour)
    if view:  # extra views: another angle (rotation), distance (zoom) and light
        img = img.rotate(rng.uniform(-18, 18), resample=Image.Resampling.BICUBIC, fillcolor=tuple(tint))
        zoom = rng.uniform(0.8, 1.0)
        box = int(_SIZE * (1 - zoom) / 2)
        img = img.crop((box, box, _SIZE - box, _SIZE - box)).resize((_SIZE, _SIZE), Image.Resampling.BICUBIC)
    return img.filter(ImageFilter.GaussianBlur(0.6))


def _write_catalogue(out: Path, items: list[tuple[str, str, Callable, tuple[int, int, int]]], seed: int,
                     prefix: str, currency: str) -> int:
    rng = random.Random(seed)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "model.json").write_text(json.dumps({"currency": currency}) + "\n", encoding="utf-8")
    rows = []
    for n, (title, category, painter, colour) in enumerate(items):
        pid = f"{prefix}{1001 + n}"
        refs = []
        for view in range(rng.randint(1, 4)):
            ref = f"images/{pid}_{view}.jpg"
            _render(painter, rng, colour, view).save(out / ref, quality=85)
            refs.append(ref)
        rows.append({"shopify_product_id": pid, "title": title, "images": json.dumps(refs),
                     "preview_image": refs[0], "category": category,
                     "price": f"{rng.randint(8, 180)}.{rng.choice(['00', '50', '99'])}", "vendor": "Demo Co"})
    with open(out / "products.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def general_items(per_category: int = 11) -> list:
    colours = list(_COLOURS.items())
    return [(f"{cname} {names[i % len(names)]}", cat, painter, colour)
            for cat, (painter, names) in GENERAL.items()
            for i, (cname, colour) in enumerate(colours[:per_category])]


def shirt_items(per_category: int = 7) -> list:
    patterns = ["solid", "stripes", "checks"]
    items = []
    for cat, style in _SHIRT_STYLES.items():
        for i, (cname, colour) in enumerate(list(_COLOURS.items())[:per_category]):
            pattern = patterns[i % 3]
            painter = functools.partial(_shirt, pattern=pattern, **style)
            label = cat.rstrip("s").replace("-", " ").title()
            items.append((f"{cname} {pattern.title()} {label}", cat, painter, colour))
    return items


def write_demo(data_dir: Path, *, general_per_category: int = 11, shirts_per_category: int = 7) -> dict[str, int]:
    """Write both demo catalogues under ``data_dir``; returns products per model."""
    return {
        "general": _write_catalogue(Path(data_dir) / "general", general_items(general_per_category), 1, "G",
                                    "USD"),
        "shirts": _write_catalogue(Path(data_dir) / "shirts", shirt_items(shirts_per_category), 2, "S", "EUR"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("data_dir", type=Path, nargs="?", default=Path(__file__).resolve().parent.parent / "data")
    args = parser.parse_args(argv)
    counts = write_demo(args.data_dir)
    print(", ".join(f"{k}: {v} products" for k, v in counts.items()) + f" written under {args.data_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
