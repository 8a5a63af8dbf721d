#!/usr/bin/env python3
"""numpy reference of mrbm's classical training rules, and the Table 1 baseline.

Two jobs, one data set (MNIST t10k, 8,000 train / 2,000 test split by
numpy.random.default_rng(0).permutation, pixels / 255):

  --rules   CD-1 and PCD on a dense binary RBM 784-500 with the
            hyper-parameters of experiments/rbm_algorithms.toml (SGD lr 0.005,
            batch 100, momentum 0.5 then 0.9 after 5 epochs, L2 2e-4, 20
            epochs, init N(0, 0.01^2)), then the AIS test log-likelihood
            (14,500 betas spaced as Salakhutdinov & Murray, 100 runs,
            base-rate model, thresholded digits). Prints seconds per epoch
            and nats per image, one JSON line per rule.
  --baseline scikit-learn's BernoulliRBM (500 hidden, lr 0.01, 10 iterations)
            + LIBLINEAR at C = 1 on its features, and LIBLINEAR on raw pixels:
            test error in percent over three seeds.

The data folder comes from --data, else $MRBM_SHARED_DATA/mnist, else
../shared/data/mnist beside the repository. Requirements:
bench/requirements-rbm.txt (tools/reference-env.sh makes a venv).
"""
import argparse
import gzip
import json
import os
import struct
import time

import numpy as np


def data_dir(arg):
    if arg:
        return arg
    env = os.environ.get("MRBM_SHARED_DATA")
    if env:
        return os.path.join(env, "mnist")
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "..", "..", "shared", "data", "mnist")


def read_idx(path):
    with gzip.open(path, "rb") as f:
        raw = f.read()
    magic = struct.unpack(">I", raw[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw[4 + 4 * ndim :], dtype=np.uint8).reshape(dims)


def load(d):
    x = read_idx(os.path.join(d, "t10k-images-idx3-ubyte.gz")).reshape(-1, 784)
    y = read_idx(os.path.join(d, "t10k-labels-idx1-ubyte.gz"))
    perm = np.random.default_rng(0).permutation(len(x))
    tr, te = perm[:8000], perm[8000:]
    return x[tr] / 255.0, y[tr], x[te] / 255.0, y[te]


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def softplus(z):
    return np.logaddexp(0.0, z)


def train(x, rule, epochs=20, lr=0.005, batch=100, wd=2e-4, seed=1):
    rng = np.random.default_rng(seed)
    d, h = x.shape[1], 500
    w = rng.normal(0, 0.01, (d, h)).astype(np.float32)
    a = np.zeros(d, np.float32)
    b = np.zeros(h, np.float32)
    vw, va, vb = np.zeros_like(w), np.zeros_like(a), np.zeros_like(b)
    chain = None
    x = x.astype(np.float32)
    per_epoch = []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        m = 0.5 if epoch <= 5 else 0.9
        order = rng.permutation(len(x))
        for i in range(0, len(x) - batch + 1, batch):
            v = x[order[i : i + batch]]
            hp = sigmoid(v @ w + b)
            if rule == "cd1":
                hs = (rng.random(hp.shape) < hp).astype(np.float32)
                vn = (rng.random(v.shape) < sigmoid(hs @ w.T + a)).astype(np.float32)
            else:  # pcd: chains start at the first batch
                if chain is None:
                    chain = v.copy()
                hs = (rng.random(hp.shape) < sigmoid(chain @ w + b)).astype(np.float32)
                chain = (rng.random(v.shape) < sigmoid(hs @ w.T + a)).astype(np.float32)
                vn = chain
            hn = sigmoid(vn @ w + b)
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
    return w.astype(np.float64), a.astype(np.float64), b.astype(np.float64), per_epoch


def sm_betas(total=14500):
    n1 = round(total * 500 / 14500)
    n2 = round(total * 4000 / 14500)
    n3 = total - n1 - n2
    return np.concatenate(
        [[0.0], np.linspace(0, 0.5, n1 + 1)[1:], np.linspace(0.5, 0.9, n2 + 1)[1:], np.linspace(0.9, 1.0, n3 + 1)[1:]]
    )


def ais_log_z(w, a, b, data, runs=100, betas=14500, seed=1):
    rng = np.random.default_rng(seed)
    mean = np.clip(data.mean(0), 0.5 / (len(data) + 1), 1 - 0.5 / (len(data) + 1))
    a0 = np.log(mean) - np.log1p(-mean)
    bs = sm_betas(betas)
    h = w.shape[1]
    log_z0 = softplus(a0).sum() + h * np.log(2.0)
    v = (rng.random((runs, len(a))) < sigmoid(a0)).astype(np.float64)
    logw = np.zeros(runs)
    for k in range(1, len(bs)):
        bp, bk = bs[k - 1], bs[k]
        x = v @ w + b
        logw += (bk - bp) * (v @ (a - a0)) + (softplus(bk * x) - softplus(bp * x)).sum(1)
        if k + 1 == len(bs):
            break
        hs = (rng.random(x.shape) < sigmoid(bk * x)).astype(np.float64)
        vin = (1 - bk) * a0 + bk * (a + hs @ w.T)
        v = (rng.random(v.shape) < sigmoid(vin)).astype(np.float64)
    m = logw.max()
    return log_z0 + m + np.log(np.mean(np.exp(logw - m)))


def loglik(w, a, b, v, log_z):
    return float(np.mean(v @ a + softplus(v @ w + b).sum(1)) - log_z)


def rules(args):
    xtr, _, xte, _ = load(data_dir(args.data))
    btr, bte = (xtr >= 0.5).astype(np.float64), (xte >= 0.5).astype(np.float64)
    for rule in ["cd1", "pcd"]:
        w, a, b, per_epoch = train(xtr, rule, epochs=args.epochs, lr=args.lr)
        if args.no_ais:
            print(json.dumps({"impl": "numpy", "rule": rule, "lr": args.lr, "train_seconds": float(np.sum(per_epoch))}), flush=True)
            continue
        t0 = time.perf_counter()
        lz = ais_log_z(w, a, b, btr, betas=args.betas)
        print(
            json.dumps(
                {
                    "impl": "numpy",
                    "rule": rule,
                    "lr": args.lr,
                    "seconds_per_epoch": float(np.median(per_epoch)),
                    "train_seconds": float(np.sum(per_epoch)),
                    "log_z": float(lz),
                    "test_loglik": loglik(w, a, b, bte, lz),
                    "train_loglik": loglik(w, a, b, btr, lz),
                    "ais_seconds": time.perf_counter() - t0,
                }
            ),
            flush=True,
        )


def baseline(args):
    import liblinear.liblinearutil as ll
    from sklearn.neural_network import BernoulliRBM

    xtr, ytr, xte, yte = load(data_dir(args.data))

    def svm(ftr, fte):
        m = ll.train(ytr.tolist(), ftr.tolist(), "-s 2 -c 1 -B 1 -q")
        _, (acc, _, _), _ = ll.predict(yte.tolist(), fte.tolist(), m, "-q")
        return 100.0 - acc

    print(json.dumps({"impl": "liblinear", "features": "pixels", "test_error": svm(xtr, xte)}), flush=True)
    for seed in [0, 1, 2]:
        t0 = time.perf_counter()
        rbm = BernoulliRBM(n_components=500, learning_rate=0.01, n_iter=10, random_state=seed)
        rbm.fit(xtr)
        err = svm(rbm.transform(xtr), rbm.transform(xte))
        print(
            json.dumps(
                {"impl": "sklearn BernoulliRBM + liblinear", "seed": seed, "test_error": err, "seconds": time.perf_counter() - t0}
            ),
            flush=True,
        )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="folder with the t10k IDX files")
    p.add_argument("--rules", action="store_true")
    p.add_argument("--baseline", action="store_true")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--no-ais", action="store_true", help="training times only")
    p.add_argument("--betas", type=int, default=14500)
    args = p.parse_args()
    if not (args.rules or args.baseline):
        args.rules = args.baseline = True
    if args.rules:
        rules(args)
    if args.baseline:
        baseline(args)
