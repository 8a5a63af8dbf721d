"""Check Table 1's in-pipeline BernoulliRBM baseline against scikit-learn.

Reads the very split the pipeline uses (the `transform` stage's
train.safetensors / val.safetensors / test.safetensors, mrbm's own
artifacts), trains scikit-learn's BernoulliRBM on the training part with the
settings of the `bernoulli_rbm` variant of experiments/table1.toml (500
hidden units, lr 0.01, batch 10, 10 iterations; sklearn's PCD), and scores
LIBLINEAR -s 2 -B 1 (squared hinge, C as given, raw hidden means) on one
part: `val` (the default: what calibration may read) or `test` (to compare
with the final table's column, once). One JSON line per seed, then the
mean and std over the seeds.

    PY=$(tools/reference-env.sh bench/requirements-rbm.txt)
    KEY=$(mrbm show prep | $PY -c 'import json,sys; print(json.load(sys.stdin)["key"])')
    $PY tools/table1_sklearn_check.py .mrbm/entries/$KEY/out --part val
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


def load(split_dir, part):
    xtr, ytr = read_image_set(os.path.join(split_dir, "train.safetensors"))
    xev, yev = read_image_set(os.path.join(split_dir, f"{part}.safetensors"))
    # the pipeline's visible values for N = 1: pixel * 1/255
    f = lambda x: (x.reshape(len(x), -1).astype(np.float32) / np.float32(255)).astype(np.float64)
    return f(xtr), ytr, f(xev), yev


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
    args = p.parse_args()

    import liblinear.liblinearutil as ll
    from sklearn.neural_network import BernoulliRBM

    xtr, ytr, xev, yev = load(args.split_dir, args.part)
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
        m = ll.train(ytr.tolist(), rbm.transform(xtr).tolist(), f"-s 2 -c {args.C} -B 1 -q")
        _, (acc, _, _), _ = ll.predict(yev.tolist(), rbm.transform(xev).tolist(), m, "-q")
        errs.append(100.0 - acc)
        print(json.dumps({"impl": "sklearn BernoulliRBM + liblinear", "part": args.part, "seed": seed,
                          "error": errs[-1], "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    e = np.array(errs)
    print(json.dumps({"part": args.part, "mean": round(float(e.mean()), 3),
                      "std": round(float(e.std(ddof=1)), 3) if len(e) > 1 else 0.0,
                      "min": float(e.min()), "max": float(e.max())}))


if __name__ == "__main__":
    main()
