#!/usr/bin/env python3
"""Pillow reference outputs for the CelebA crop/resize test in crates/mrbm-data.

For every JPEG in the CelebA sample folder (sorted by name) and each
(crop, size, filter) case, this records a checksum of Pillow's RGB result
(FNV-1a 64 over the interleaved bytes) and its pixel sum in one small JSON
file: no image data is committed. The Rust test (tests/real_data.rs) decodes
the same JPEGs (through MRBM_SHARED_DATA), applies its own centre crop and
resize, and requires the same bytes as Pillow.

Centre crop offset: floor((W - w) / 2), floor((H - h) / 2), the rule
mrbm-data documents. Pillow's resize without reducing_gap is its exact
antialiased convolution (support scaled by the reduction factor).

    pip install -r tools/data_requirements.txt
    python3 tools/data_pillow_fixtures.py ../shared/data/celeba-sample \
        crates/mrbm-data/tests/fixtures
"""
import json
import os
import sys
from pathlib import Path

import PIL
from PIL import Image

CASES = [
    # (crop side, output side, filter name, Pillow filter)
    (140, 64, "bilinear", Image.Resampling.BILINEAR),
    (140, 64, "lanczos3", Image.Resampling.LANCZOS),
    (178, 128, "bilinear", Image.Resampling.BILINEAR),
    (178, 128, "lanczos3", Image.Resampling.LANCZOS),
]


def centre_crop(im, side):
    w, h = im.size
    left, top = (w - side) // 2, (h - side) // 2
    return im.crop((left, top, left + side, top + side))


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else Path(os.environ.get("MRBM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "celeba-sample")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "crates/mrbm-data/tests/fixtures")
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.jpg"))
    print(f"Pillow {PIL.__version__}, {len(files)} images")
    cases = {}
    for crop, size, name, flt in CASES:
        rows = []
        for f in files:
            im = Image.open(f).convert("RGB")
            data = centre_crop(im, crop).resize((size, size), flt).tobytes()
            rows.append({"file": f.name, "fnv1a64": f"{fnv1a64(data):016x}", "sum": sum(data)})
        cases[f"c{crop}_{size}_{name}"] = rows
    path = out / "celeba_pillow.json"
    path.write_text(json.dumps({"pillow": PIL.__version__, "cases": cases}, indent=1) + "\n")
    print(path, path.stat().st_size, "bytes")


def fnv1a64(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h

if __name__ == "__main__":
    main()
