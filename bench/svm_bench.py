"""SVM fit time: mrbm vs liblinear-official 2.50 (its C library) vs
scikit-learn's LinearSVC (which bundles LIBLINEAR), on the same data and
settings, one run each, with ratios.

Data sets:
  mnist: the real MNIST t10k split 8000/2000 of tools/mnist_split.py (pixels/255, ~19% non-zero);
  dense: 10000 x 500 dense features (8000/2000), 10 classes, Gaussian class
         means plus noise (the shape of RBM features), seeded.

    tools/reference-env.sh tools/requirements-eval.txt   # makes .venv/
    cargo build --release -p mrbm-eval --example svm_bench
    MRBM_SHARED_DATA=../shared/data .venv/bin/python bench/svm_bench.py [--threads 1,2]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from liblinear import liblinearutil as llu
from safetensors.numpy import save_file
from sklearn.svm import LinearSVC

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import mnist_split  # noqa: E402


def dense_set():
    rng = np.random.default_rng(5)
    means = rng.normal(size=(10, 500)) * 0.15
    y = rng.integers(0, 10, size=10000)
    x = (means[y] + rng.normal(size=(10000, 500))).astype(np.float32)
    return x[:8000], y[:8000].astype(np.int64), x[8000:], y[8000:].astype(np.int64)


def write_fs(path, x, y):
    save_file({"features": np.ascontiguousarray(x, dtype=np.float32), "labels": np.ascontiguousarray(y, dtype=np.int64)}, path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--bin", default=os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "examples", "svm_bench"))
    a = ap.parse_args()
    images, labels = mnist_split.mnist_t10k()
    xtr, ytr, xte, yte, _ = mnist_split.split(images, labels)
    sets = {"mnist": (xtr, ytr, xte, yte), "dense": dense_set()}
    configs = [("squared_hinge", 1, 0.1, 0.1, 1.0), ("hinge", 3, 0.01, 0.1, 1.0)]
    tmp = tempfile.mkdtemp()
    rows = []
    for sname, (xtr, ytr, xte, yte) in sets.items():
        ptr, pte = os.path.join(tmp, f"{sname}_tr.safetensors"), os.path.join(tmp, f"{sname}_te.safetensors")
        write_fs(ptr, xtr, ytr)
        write_fs(pte, xte, yte)
        x64, t64 = xtr.astype(np.float64), xte.astype(np.float64)
        for loss, s, c, eps, bias in configs:
            opts = f"-s {s} -c {c} -e {eps} -B {bias} -q"
            prob = llu.problem(ytr.astype(np.float64), x64)  # data conversion is not timed
            param = llu.parameter(opts)
            t = time.perf_counter()
            m = llu.train(prob, param)
            t_ll = time.perf_counter() - t
            p, _, _ = llu.predict(yte.astype(np.float64), t64, m, "-q")
            e_ll = 100 * float(np.mean(np.array(p) != yte))
            svc = LinearSVC(loss=loss, C=c, tol=eps, dual=True, intercept_scaling=bias, max_iter=300, random_state=0)
            t = time.perf_counter()
            svc.fit(x64, ytr)
            t_sk = time.perf_counter() - t
            e_sk = 100 * float(np.mean(svc.predict(t64) != yte))
            for th in [int(v) for v in a.threads.split(",")]:
                out = subprocess.run([a.bin, ptr, pte, loss, str(c), str(eps), str(bias), str(th)], check=True, capture_output=True, text=True).stdout
                r = json.loads(out)
                rows.append((sname, f"{opts[:-3]}", th, r["fit_seconds"], r["test_error"], t_ll, e_ll, t_sk, e_sk))
    print(f"{'data':6} {'options':24} {'thr':>3} {'mrbm s':>8} {'err%':>6} {'liblin s':>8} {'err%':>6} {'sklearn s':>9} {'err%':>6} {'LL/mrbm':>8} {'SK/mrbm':>8}")
    for sname, opts, th, tm, em, tl, el, ts, es in rows:
        print(f"{sname:6} {opts:24} {th:>3} {tm:8.3f} {em:6.2f} {tl:8.3f} {el:6.2f} {ts:9.3f} {es:6.2f} {tl / tm:8.2f}x {ts / tm:8.2f}x")
    print("(LIBLINEAR and LinearSVC are single-threaded; ratio > 1 means mrbm is faster)")


if __name__ == "__main__":
    main()
