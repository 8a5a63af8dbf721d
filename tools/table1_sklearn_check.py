"""Check Table 1's in-pipeline BernoulliRBM baseline against scikit-learn.

Reads the very split the pipeline uses (the `transform` stage's
train.safetensors / val.safetensors / test.safetensors, mrbm's own
artifacts), trains scikit-learn's BernoulliRBM on the training part with the
settings of the `bernoulli_rbm` variant of experiments/table1.toml (500
hidden units, lr 0.01, batch 10, 10 iterations; sklearn's PCD), and scores
LIBLINEAR -s 2 -B 1 (squared hinge, C as given, raw hidden means) on one
part: `val` (the default: what calibration may read) or `test` (to compare
with the final table's column, once). One JSON line per seed, then the
mean and std over the seeds. With `--shifts 1` the SVM also trains on the
hidden means of every training digit shifted one pixel down, up, right and
left (the edge row or column repeated, as mrbm's `augment` stage does; the
RBM itself trains on the originals), as table1's mnist_t10k row now does.

    PY=$(tools/reference-env.sh bench/requirements-rbm.txt)
    KEY=$(mrbm show prep | $PY -c 'import json,sys; print(json.load(sys.stdin)["key"])')
    $PY tools/table1_sklearn_check.py .mrbm/entries/$KEY/out --part val
    $PY tools/table1_sklearn_check.py .mrbm/entries/$KEY/out --part test --shifts 1
    (after `mrbm run experiments/table1_val.toml`, whose `prep` is table1's split)

On a loaded machine set OPENBLAS_NUM_THREADS=1: with two BLAS threads
fighting other processes one seed took over 50 min; with one, 134 s.
Requirements: bench/requirements-rbm.txt (numpy, scikit-learn,
liblinear-official). Never a dependency of mrbm itself.
"""
import argparse
import json
import os
import struct
import time

import numpy as np


def read_image_set(path):
    """images (n, c, h, w) u8 and labels (n,) i64 of an mrbm ImageSet."""
    with open(path, "rb") as f:
        raw = f.read()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + hlen])
    body = raw[8 + hlen :]

    def tensor(name, dtype):
        t = header[name]
        a, b = t["data_offsets"]
        return np.frombuffer(body[a:b], dtype=dtype).reshape(t["shape"])

    return tensor("images", np.uint8), tensor("labels", np.int64)


def shifted(x, shifts):
    """x (n, c, h, w) with, for d = 1..shifts, copies moved d pixels down, up,
    right and left appended (edge repeated): mrbm's `augment` stage."""
    out = [x]
    h, w = x.shape[2], x.shape[3]
    for d in range(1, shifts + 1):
        for dy, dx in ((d, 0), (-d, 0), (0, d), (0, -d)):
            ys = np.clip(np.arange(h) - dy, 0, h - 1)
            xs = np.clip(np.arange(w) - dx, 0, w - 1)
            out.append(x[:, :, ys][:, :, :, xs])
    return np.concatenate(out)


def load(split_dir, part):
    xtr, ytr = read_image_set(os.path.join(split_dir, "train.safetensors"))
    xev, yev = read_image_set(os.path.join(split_dir, f"{part}.safetensors"))
    return xtr, ytr, xev, yev


def visible(x):
    """the pipeline's visible values for N = 1: pixel * 1/255"""
    return (x.reshape(len(x), -1).astype(np.float32) / np.float32(255)).astype(np.float64)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("split_dir", help="the transform stage's output folder (train/val/test.safetensors)")
    p.add_argument("--part", choices=["val", "test"], default="val")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--n-components", type=int, default=500)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=10)
    p.add_argument("--n-iter", type=int, default=10)
    p.add_argument("--C", type=float, default=1.0)
    p.add_argument("--shifts", type=int, default=0,
                   help="the SVM also trains on the training digits shifted 1..SHIFTS pixels each way")
    args = p.parse_args()

    import liblinear.liblinearutil as ll
    from sklearn.neural_network import BernoulliRBM

    xtr_img, ytr, xev_img, yev = load(args.split_dir, args.part)
    xtr, xev = visible(xtr_img), visible(xev_img)
    xsvm = visible(shifted(xtr_img, args.shifts))
    ysvm = np.tile(ytr, 1 + 4 * args.shifts)
    errs = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        rbm = BernoulliRBM(
            n_components=args.n_components,
            learning_rate=args.lr,
            batch_size=args.batch_size,
            n_iter=args.n_iter,
            random_state=seed,
        )
        rbm.fit(xtr)
        m = ll.train(ysvm.tolist(), rbm.transform(xsvm).tolist(), f"-s 2 -c {args.C} -B 1 -q")
        _, (acc, _, _), _ = ll.predict(yev.tolist(), rbm.transform(xev).tolist(), m, "-q")
        errs.append(100.0 - acc)
        print(json.dumps({"impl": "sklearn BernoulliRBM + liblinear", "part": args.part, "shifts": args.shifts, "seed": seed,
                          "error": errs[-1], "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    e = np.array(errs)
    print(json.dumps({"part": args.part, "shifts": args.shifts, "mean": round(float(e.mean()), 3),
                      "std": round(float(e.std(ddof=1)), 3) if len(e) > 1 else 0.0,
                      "min": float(e.min()), "max": float(e.max())}))


if __name__ == "__main__":
    main()
