#!/usr/bin/env python3
"""Decode + centre crop + resize of JPEG face images to 64x64: images per
second for mrbm (Rust, crates/mrbm-data) against Pillow and, when it
imports, torchvision, on the same files with the same number of threads, in
one run. Prints each figure and the ratio mrbm / best other.

    pip install -r bench/data_requirements.txt
    cargo build --release -p mrbm-data --example data_bench
    python3 bench/data_decode_bench.py --dir /work/shared/data/celeba-sample \
        --threads 2 --repeat 200

Every tool reads the sorted .jpg files of --dir, the list repeated --repeat
times (files come from the page cache), crops the centre --crop square
(floor((W - c) / 2), as mrbm), and resizes to --size with an antialiased
bilinear filter. mrbm and Pillow give identical pixels (checksums printed);
torchvision decodes with libjpeg-turbo too but its antialiased resize
rounds differently (checksum differs slightly).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


def pillow_one(path, crop, size, flt):
    im = Image.open(path).convert("RGB")
    w, h = im.size
    left, top = (w - crop) // 2, (h - crop) // 2
    r = im.crop((left, top, left + crop, top + crop)).resize((size, size), flt)
    return np.asarray(r)


def run_pool(fn, files, threads):
    # Pillow and torchvision release the GIL while decoding and resizing,
    # so a thread pool is the fair equivalent of mrbm's rayon pool.
    with ThreadPoolExecutor(threads) as ex:
        list(ex.map(fn, files[: min(len(files), 32)]))  # warm-up
        t = time.perf_counter()
        out = list(ex.map(fn, files, chunksize=16))
        secs = time.perf_counter() - t
    checksum = int(sum(int(a.astype(np.int64).sum()) for a in out))
    return len(files) / secs, secs, checksum


def bench_pillow(files, args):
    flt = {"bilinear": Image.Resampling.BILINEAR, "lanczos3": Image.Resampling.LANCZOS}[args.filter]
    return run_pool(lambda p: pillow_one(p, args.crop, args.size, flt), files, args.threads)


def bench_torchvision(files, args):
    try:
        import torch
        import torchvision
        from torchvision.io import decode_jpeg, read_file
        from torchvision.transforms.v2 import functional as F
    except Exception as e:  # not installed: skip, say why
        return None, f"torchvision unavailable: {e}"
    torch.set_num_threads(1)  # parallelism comes from the thread pool
    interp = {"bilinear": F.InterpolationMode.BILINEAR, "lanczos3": None}[args.filter]
    if interp is None:
        return None, "torchvision has no lanczos3"

    def one(p):
        img = decode_jpeg(read_file(str(p)))  # uint8 [3, H, W]
        _, h, w = img.shape
        left, top = (w - args.crop) // 2, (h - args.crop) // 2
        img = F.crop(img, top, left, args.crop, args.crop)
        return F.resize(img, [args.size, args.size], interpolation=interp, antialias=True).numpy()

    return run_pool(one, files, args.threads), f"torchvision {torchvision.__version__}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default=os.environ.get("MRBM_SHARED_DATA", "/work/shared/data") + "/celeba-sample")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--crop", type=int, default=140)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--filter", default="bilinear", choices=["bilinear", "lanczos3"])
    ap.add_argument("--exe", default=os.environ.get("CARGO_TARGET_DIR", "target") + "/release/examples/data_bench")
    args = ap.parse_args()

    files = sorted(Path(args.dir).glob("*.jpg")) * args.repeat
    print(f"{len(files)} decodes of {len(files) // args.repeat} JPEGs from {args.dir}, "
          f"crop {args.crop} -> {args.size}x{args.size} {args.filter}, {args.threads} threads")
    results = {}

    out = subprocess.run([args.exe, args.dir, str(args.threads), str(args.repeat), str(args.crop), str(args.size), args.filter],
                         check=True, capture_output=True, text=True).stdout
    m = json.loads(out.strip().splitlines()[-1])
    results["mrbm"] = (m["images_per_s"], m["seconds"], m["checksum"])

    import PIL
    results[f"Pillow {PIL.__version__}"] = bench_pillow(files, args)
    tv, why = bench_torchvision(files, args)
    if tv is None:
        print(f"({why})")
    else:
        results[why] = tv

    for name, (ips, secs, checksum) in results.items():
        print(f"{name:>22}: {ips:9.1f} images/s  ({secs:.2f} s, checksum {checksum})")
    best_name, best = max(((k, v) for k, v in results.items() if k != "mrbm"), key=lambda kv: kv[1][0])
    print(f"ratio mrbm / {best_name}: {results['mrbm'][0] / best[0]:.2f}x")


if __name__ == "__main__":
    sys.exit(main())
