#!/usr/bin/env python3
"""Reference timings of block Gibbs sampling and AIS on a dense binary RBM,
numpy and (when importable) PyTorch on the CPU: the other side of
bench/sampling_bench.sh.

Same sizes and draws per step as mrbm's `sample` and `loglik` stages in
bench/sampling.toml: an RBM 784-500, 100 chains of --steps Gibbs steps from
uniform noise (one h ~ p(h | v) and one v ~ p(v | h) per step, two matrix
products and two Bernoulli draws), and AIS with --betas intermediate
distributions spaced as Salakhutdinov & Murray (2008) and --runs runs from
a base-rate model (each beta: one product for the weights, one h draw, one
product and one v draw). The weights are random N(0, 0.01^2) (speed does not
depend on them); float32 throughout. Prints one JSON line per tool and task
with its seconds. Not a test: speed is only measured.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import rbm_reference  # noqa: E402  (bench/rbm_reference.py: one AIS schedule)


def sm_betas(total):
    # The schedule of bench/rbm_reference.py (Salakhutdinov & Murray), in float32.
    return rbm_reference.sm_betas(total).astype(np.float32)


def numpy_gibbs(w, a, b, chains, steps, rng):
    v = (rng.random((chains, w.shape[0]), dtype=np.float32) < 0.5).astype(np.float32)
    for _ in range(steps):
        h = (rng.random((chains, w.shape[1]), dtype=np.float32) < 1 / (1 + np.exp(-(v @ w + b)))).astype(np.float32)
        v = (rng.random(v.shape, dtype=np.float32) < 1 / (1 + np.exp(-(h @ w.T + a)))).astype(np.float32)
    return v


def numpy_ais(w, a, b, a0, runs, betas, rng):
    bs = sm_betas(betas)
    sp = lambda z: np.logaddexp(0, z)  # noqa: E731
    v = (rng.random((runs, len(a)), dtype=np.float32) < 1 / (1 + np.exp(-a0))).astype(np.float32)
    logw = np.zeros(runs)
    for k in range(1, len(bs)):
        bp, bk = bs[k - 1], bs[k]
        x = v @ w + b
        logw += (bk - bp) * (v @ (a - a0)) + (sp(bk * x) - sp(bp * x)).sum(1)
        if k + 1 == len(bs):
            break
        h = (rng.random(x.shape, dtype=np.float32) < 1 / (1 + np.exp(-bk * x))).astype(np.float32)
        vin = (1 - bk) * a0 + bk * (a + h @ w.T)
        v = (rng.random(v.shape, dtype=np.float32) < 1 / (1 + np.exp(-vin))).astype(np.float32)
    return logw


def torch_tasks(w, a, b, a0, args, threads):
    import torch

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(1)
    W, A, B, A0 = (torch.from_numpy(t) for t in (w, a, b, a0))
    out = []
    with torch.no_grad():
        t0 = time.perf_counter()
        v = torch.bernoulli(torch.full((args.chains, len(a)), 0.5), generator=g)
        for _ in range(args.steps):
            h = torch.bernoulli(torch.sigmoid(v @ W + B), generator=g)
            v = torch.bernoulli(torch.sigmoid(h @ W.T + A), generator=g)
        out.append(("gibbs", time.perf_counter() - t0))
        t0 = time.perf_counter()
        bs = torch.from_numpy(sm_betas(args.betas))
        sp = torch.nn.functional.softplus
        v = torch.bernoulli(torch.sigmoid(A0).expand(args.runs, -1), generator=g)
        logw = torch.zeros(args.runs, dtype=torch.float64)
        for k in range(1, len(bs)):
            bp, bk = float(bs[k - 1]), float(bs[k])
            x = v @ W + B
            logw += ((bk - bp) * (v @ (A - A0)) + (sp(bk * x) - sp(bp * x)).sum(1)).double()
            if k + 1 == len(bs):
                break
            h = torch.bernoulli(torch.sigmoid(bk * x), generator=g)
            v = torch.bernoulli(torch.sigmoid((1 - bk) * A0 + bk * (A + h @ W.T)), generator=g)
        out.append(("ais", time.perf_counter() - t0))
    return f"pytorch {torch.__version__}", out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--visible", type=int, default=784)
    p.add_argument("--hidden", type=int, default=500)
    p.add_argument("--chains", type=int, default=100)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--betas", type=int, default=14500)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = p.parse_args()
    rng = np.random.default_rng(1)
    w = (0.01 * rng.standard_normal((args.visible, args.hidden))).astype(np.float32)
    a = np.zeros(args.visible, np.float32)
    b = np.zeros(args.hidden, np.float32)
    a0 = np.full(args.visible, -2.0, np.float32)  # a base rate of about 12 % ink
    t0 = time.perf_counter()
    numpy_gibbs(w, a, b, args.chains, args.steps, rng)
    print(json.dumps({"tool": f"numpy {np.__version__}", "task": "gibbs", "seconds": time.perf_counter() - t0}))
    t0 = time.perf_counter()
    numpy_ais(w, a, b, a0, args.runs, args.betas, rng)
    print(json.dumps({"tool": f"numpy {np.__version__}", "task": "ais", "seconds": time.perf_counter() - t0}))
    try:
        tool, out = torch_tasks(w, a, b, a0, args, args.threads)
    except ImportError:
        print(json.dumps({"tool": "pytorch", "task": "none", "note": "torch not importable: numpy only"}))
        return
    for task, secs in out:
        print(json.dumps({"tool": tool, "task": task, "seconds": secs}))


if __name__ == "__main__":
    main()
