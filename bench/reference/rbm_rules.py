#!/usr/bin/env python3
"""PyTorch CPU reference of mrbm's sampled training rules: CD-1 and PCD on a
dense binary RBM 784-500, the same sizes, hyper-parameters and draws per step
as bench/rbm_reference.py's numpy `train` (and mrbm's bench/rbm_rules.toml):
MNIST t10k, 8,000 training digits (the same split), pixels / 255, SGD lr
0.005, batch 100, momentum 0.5 then 0.9 after 5 epochs, L2 2e-4, 20 epochs,
init N(0, 0.01^2), float32. Per batch: hidden probabilities of the data, one
h draw and one v draw (CD-1 from the data, PCD from the persistent chains,
which start at the first batch), the hidden probabilities of the negative
state, the three gradients and the momentum update. Prints one JSON line per
rule with its training seconds (the other side of bench/rbm_rules_bench.sh).
Not a test: speed is only measured.

Needs torch (bench/reference/requirements.txt) and numpy.
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import rbm_reference  # noqa: E402  (bench/rbm_reference.py: data and split)


def train(x, rule, epochs=20, lr=0.005, batch=100, wd=2e-4, seed=1):
    g = torch.Generator().manual_seed(seed)
    d, h = x.shape[1], 500
    w = torch.randn((d, h), generator=g) * 0.01
    a = torch.zeros(d)
    b = torch.zeros(h)
    vw, va, vb = torch.zeros_like(w), torch.zeros_like(a), torch.zeros_like(b)
    chain = None
    per_epoch = []
    with torch.no_grad():
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            m = 0.5 if epoch <= 5 else 0.9
            order = torch.randperm(len(x), generator=g)
            for i in range(0, len(x) - batch + 1, batch):
                v = x[order[i : i + batch]]
                hp = torch.sigmoid(v @ w + b)
                if rule == "cd1":
                    hs = torch.bernoulli(hp, generator=g)
                    vn = torch.bernoulli(torch.sigmoid(hs @ w.T + a), generator=g)
                else:  # pcd: chains start at the first batch
                    if chain is None:
                        chain = v.clone()
                    hs = torch.bernoulli(torch.sigmoid(chain @ w + b), generator=g)
                    chain = torch.bernoulli(torch.sigmoid(hs @ w.T + a), generator=g)
                    vn = chain
                hn = torch.sigmoid(vn @ w + b)
                gw = -(v.T @ hp - vn.T @ hn) / batch + wd * w
                ga = -(v - vn).mean(0)
                gb = -(hp - hn).mean(0)
                vw = m * vw + gw
                va = m * va + ga
                vb = m * vb + gb
                w -= lr * vw
                a -= lr * va
                b -= lr * vb
            per_epoch.append(time.perf_counter() - t0)
    return per_epoch


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="folder with the t10k IDX files")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    xtr, _, _, _ = rbm_reference.load(rbm_reference.data_dir(args.data))
    x = torch.from_numpy(xtr.astype("float32"))
    for rule in ["cd1", "pcd"]:
        per_epoch = train(x, rule, epochs=args.epochs)
        print(json.dumps({"impl": f"pytorch {torch.__version__}", "rule": rule, "train_seconds": sum(per_epoch)}), flush=True)


if __name__ == "__main__":
    main()
