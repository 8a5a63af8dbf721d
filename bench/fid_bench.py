"""Inception (FID) feature throughput: mrbm (burn flex CPU backend) vs
pytorch-fid 0.3.0 on CPU, same thread count, same image size and batch, one
run each after a warm-up batch, with the ratio (> 1: mrbm faster).

Both use seeded random weights (same network; the speed does not depend on
the values) and random RGB images of the given size (CelebA's 218x178 by
default), resized to 299x299 inside the network as pytorch-fid does.

    tools/reference-env.sh tools/requirements-eval.txt   # makes .venv/
    cargo build --release -p mrbm-eval --example fid_bench --example frechet_bench
    .venv/bin/python bench/fid_bench.py [--n 20 --batch 10 --threads 2]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import fid_common  # noqa: E402


def frechet(a):
    """2048-d distance on the same statistics: pytorch-fid (scipy sqrtm) vs
    mrbm (pivoted Cholesky + symmetric eigenvalues): value and time."""
    from pytorch_fid.fid_score import calculate_frechet_distance
    from safetensors.numpy import save_file

    rng = np.random.default_rng(1)
    d, n = 2048, 4096
    mix = rng.normal(size=(d, d)) / np.sqrt(d)
    stats = []
    for k in range(2):
        f = rng.normal(size=(n, d)) @ (mix if k == 0 else mix * 1.1 + 0.01)
        stats.append((f.mean(0), np.cov(f, rowvar=False)))
    t = time.perf_counter()
    ref = calculate_frechet_distance(stats[0][0], stats[0][1], stats[1][0], stats[1][1])
    t_ref = time.perf_counter() - t
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "mrbm_fid_bench")
    os.makedirs(tmp, exist_ok=True)
    paths = []
    for k, (mu, sigma) in enumerate(stats):
        p = os.path.join(tmp, f"stats{k}.safetensors")
        save_file({"mu": mu, "sigma": sigma}, p)
        paths.append(p)
    exe = os.path.join(os.path.dirname(a.bin), "frechet_bench")
    r = json.loads(subprocess.run([exe, "--files", paths[0], paths[1], str(a.threads)], check=True, capture_output=True, text=True).stdout)
    print(f"Frechet distance, d={d} (n={n} samples each): pytorch-fid {ref:.9f} in {t_ref:.2f}s; mrbm {r['fid']:.9f} in {r['seconds']:.2f}s; "
          f"relative difference {abs(r['fid'] - ref) / ref:.2e}; speed ratio {t_ref / r['seconds']:.2f}x")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--batch", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--height", type=int, default=218)
    ap.add_argument("--width", type=int, default=178)
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "examples", "fid_bench"))
    ap.add_argument("--frechet-only", action="store_true", help="only the 2048-d Frechet distance part")
    ap.add_argument("--features-only", action="store_true", help="only the Inception features part")
    a = ap.parse_args()
    if not a.features_only:
        frechet(a)
    if a.frechet_only:
        return
    torch.set_num_threads(a.threads)
    model, _ = fid_common.build_pytorch_fid(seed=7)
    x = torch.from_numpy(fid_common.random_images(3, a.n, 3, a.height, a.width).astype(np.float32) / 255.0)
    with torch.no_grad():
        model(x[: a.batch])  # warm-up
        t = time.perf_counter()
        for s in range(0, a.n, a.batch):
            model(x[s : s + a.batch])
        t_pt = time.perf_counter() - t
    ips_pt = a.n / t_pt
    env = dict(os.environ, RAYON_NUM_THREADS=str(a.threads))
    out = subprocess.run([a.bin, str(a.n), str(a.height), str(a.width), str(a.batch), str(a.threads)], check=True, capture_output=True, text=True, env=env).stdout
    r = json.loads(out)
    print(f"images {a.n} of {a.height}x{a.width}, batch {a.batch}, {a.threads} threads")
    print(f"pytorch-fid {torch.__version__}: {ips_pt:.2f} images/s")
    print(f"mrbm (mrbm-kernels host path): {r['images_per_second']:.2f} images/s")
    print(f"ratio mrbm/pytorch-fid: {r['images_per_second'] / ips_pt:.2f}x")


if __name__ == "__main__":
    main()
