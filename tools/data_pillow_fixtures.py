#!/usr/bin/env python3
"""Pillow reference outputs for the CelebA crop/resize test in crates/mrbm-data.

For every JPEG in the CelebA sample folder (sorted by name) this writes, for
each (crop, size, filter) case, one PNG that stacks Pillow's results
vertically (image i occupies rows i*size .. (i+1)*size). The Rust test
(tests/real_data.rs) decodes the same JPEGs, applies its own centre crop and
resize, and checks every pixel against these files (within 1 grey level).

Centre crop offset: floor((W - w) / 2), floor((H - h) / 2), the rule
mrbm-data documents. Pillow's resize without reducing_gap is its exact
antialiased convolution (support scaled by the reduction factor).

    pip install -r tools/data_requirements.txt
    python3 tools/data_pillow_fixtures.py /work/shared/data/celeba-sample \
        crates/mrbm-data/tests/fixtures
"""
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
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/celeba-sample")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "crates/mrbm-data/tests/fixtures")
    out.mkdir(parents=True, exist_ok=True)
    files = sorted(src.glob("*.jpg"))
    print(f"Pillow {PIL.__version__}, {len(files)} images")
    for crop, size, name, flt in CASES:
        sheet = Image.new("RGB", (size, size * len(files)))
        for i, f in enumerate(files):
            im = Image.open(f).convert("RGB")
            r = centre_crop(im, crop).resize((size, size), flt)
            sheet.paste(r, (0, i * size))
        path = out / f"celeba_c{crop}_{size}_{name}.png"
        sheet.save(path, optimize=True)
        print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
