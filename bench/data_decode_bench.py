#!/usr/bin/env python3
"""Decode + centre crop + resize of JPEG face images to 64x64: images per
second for mrbm (Rust, crates/mrbm-data) against Pillow and, when it
imports, torchvision, on the same files with the same number of threads, in
one run. Prints each figure and the ratio mrbm / best other.

    pip install -r bench/data_requirements.txt
    cargo build --release -p mrbm-data --example data_bench
    python3 bench/data_decode_bench.py --dir ../shared/data/celeba-sample \
        --threads 2 --repeat 100 --rounds 3

    # with libjpeg-turbo's SIMD code (needs nasm), a second build:
    cargo build --release -p mrbm-data --example data_bench --features simd-jpeg
    python3 bench/data_decode_bench.py --exe mrbm=/path/to/c/data_bench \
        --exe "mrbm simd=/path/to/simd/data_bench"

Every tool reads the sorted .jpg files of --dir, the list repeated --repeat
times (files come from the page cache), crops the centre --crop square
(floor((W - c) / 2), as mrbm), and resizes to --size with an antialiased
bilinear filter. Wall-clock images/s is the figure; images per CPU-second
(process CPU time, all threads) is printed too because this machine is
shared and wall time swings with other load. mrbm and Pillow give identical pixels (checksums printed);
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
        t, cpu0 = time.perf_counter(), time.process_time()
        out = list(ex.map(fn, files, chunksize=16))
        secs, cpu = time.perf_counter() - t, time.process_time() - cpu0
    checksum = int(sum(int(a.astype(np.int64).sum()) for a in out))
    return len(files) / secs, secs, checksum, len(files) / cpu


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
    ap.add_argument("--dir", default=os.path.join(os.environ.get("MRBM_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data")), "celeba-sample"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--crop", type=int, default=140)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--filter", default="bilinear", choices=["bilinear", "lanczos3"])
    ap.add_argument("--exe", action="append", default=None,
                    help="NAME=PATH of a data_bench build (repeatable), default mrbm=$CARGO_TARGET_DIR/release/examples/data_bench")
    ap.add_argument("--rounds", type=int, default=3,
                    help="rounds; the tools alternate within each round and each tool's median is reported (the machine is shared)")
    args = ap.parse_args()
    exes = [e.split("=", 1) for e in (args.exe or ["mrbm=" + os.environ.get("CARGO_TARGET_DIR", "target") + "/release/examples/data_bench"])]

    files = sorted(Path(args.dir).glob("*.jpg")) * args.repeat
    print(f"{len(files)} decodes of {len(files) // args.repeat} JPEGs from {args.dir}, "
          f"crop {args.crop} -> {args.size}x{args.size} {args.filter}, {args.threads} threads")
    import PIL
    runs = {}

    def mrbm(exe):
        out = subprocess.run([exe, args.dir, str(args.threads), str(args.repeat), str(args.crop), str(args.size), args.filter],
                             check=True, capture_output=True, text=True).stdout
        m = json.loads(out.strip().splitlines()[-1])
        return m["images_per_s"], m["seconds"], m["checksum"], m["images"] / m["cpu_seconds"]

    for _ in range(args.rounds):
        for name, exe in exes:
            runs.setdefault(name, []).append(mrbm(exe))
        runs.setdefault(f"Pillow {PIL.__version__}", []).append(bench_pillow(files, args))
        tv, why = bench_torchvision(files, args)
        if tv is None:
            print(f"({why})")
        else:
            runs.setdefault(why, []).append(tv)

    results = {}
    for name, rs in runs.items():
        rs = sorted(rs)
        results[name] = rs[len(rs) // 2]
        cpu = sorted(r[3] for r in rs)[len(rs) // 2]
        results[name] = (*results[name][:3], cpu)
        print(f"{name:>26}: {results[name][0]:9.1f} images/s median of {len(rs)} "
              f"({', '.join(f'{r[0]:.0f}' for r in rs)}); {cpu:8.1f} images per CPU-second; checksum {results[name][2]}")
    others = {k: v for k, v in results.items() if not k.startswith("mrbm")}
    for name, _ in exes:
        for other, v in others.items():
            print(f"ratio {name} / {other}: {results[name][0] / v[0]:.2f}x wall, {results[name][3] / v[3]:.2f}x CPU")


if __name__ == "__main__":
    sys.exit(main())
