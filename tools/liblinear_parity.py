"""Reference values for the mrbm-eval SVM from liblinear-official 2.50.

Trains LIBLINEAR (-s 1 squared hinge, -s 3 hinge; dual coordinate descent)
on the deterministic 8000/2000 split of the real MNIST t10k set (see
mnist_split.py) and writes crates/mrbm-eval/tests/fixtures/liblinear_mnist.json:
per configuration the test and train error (percent), the per-class dual
objective (LIBLINEAR's printed "Objective value", one-vs-rest in its class
order), iteration counts, and a checksum of the split so the Rust test can
prove it reproduced the same rows. No data goes into the fixture.

It also writes crates/mrbm-eval/tests/fixtures/liblinear_switch.json: Table 1's
pixel baseline (the same split, pixels standardised with the training rows'
mean and standard deviation, -s 1 -c 0.1 -e 0.1 -B 1), where LIBLINEAR's dual
coordinate descent reaches its 300 iterations for most classes and switches
to the primal Newton solver (-s 2): per class the dual iterations, whether it
switched, the Newton steps, the primal objective of the returned w, and
the optimum (LIBLINEAR -s 2 with a 1000x tighter tolerance) for scale.

    tools/reference-env.sh tools/requirements-eval.txt   # makes .venv/
    MRBM_SHARED_DATA=../shared/data .venv/bin/python tools/liblinear_parity.py [--switch]

(--switch: only the second fixture.)
"""
import json
import os
import re
import sys
import time

import numpy as np
from liblinear import liblinear as ll
from liblinear import liblinearutil as llu

sys.path.insert(0, os.path.dirname(__file__))
import mnist_split  # noqa: E402

CONFIGS = [
    {"loss": "squared_hinge", "s": 1, "c": 0.1, "eps": 0.01, "bias": 1.0},
    {"loss": "hinge", "s": 3, "c": 0.01, "eps": 0.01, "bias": 1.0},
    {"loss": "squared_hinge", "s": 1, "c": 0.01, "eps": 0.001, "bias": -1.0},
]


def train_capture(y, x, opts):
    """Train and return (model, LIBLINEAR's log text) via its print hook."""
    lines = []
    prob = ll.problem(y, x)
    param = ll.parameter(opts)
    cb = ll.PRINT_STRING_FUN(lambda s: lines.append(s.decode()))
    param.print_func = cb
    t = time.perf_counter()
    m = llu.train(prob, param)
    return m, "".join(lines), time.perf_counter() - t


def main():
    images, labels = mnist_split.mnist_t10k()
    xtr, ytr, xte, yte, perm = mnist_split.split(images, labels)
    xtr64, xte64 = xtr.astype(np.float64), xte.astype(np.float64)
    out = {
        "source": "liblinear-official 2.50.0 (tools/liblinear_parity.py)",
        "split_seed": mnist_split.SEED,
        "n_train": len(ytr),
        "n_test": len(yte),
        "perm_head": perm[:16],
        "perm_sum_weighted": int(sum(i * p for i, p in enumerate(perm)) % (1 << 61)),
        "configs": [],
    }
    for cfg in CONFIGS:
        opts = f"-s {cfg['s']} -c {cfg['c']} -e {cfg['eps']} -B {cfg['bias']}"
        m, log, secs = train_capture(ytr.astype(np.float64), xtr64, opts)
        objs = [float(v) for v in re.findall(r"Objective value = (\S+)", log)]
        iters = [int(v) for v in re.findall(r"#iter = (\d+)", log)]
        if "Switching to use -s 2" in log or "reaching max number" in log:
            raise SystemExit(f"{opts}: LIBLINEAR hit its iteration limit; pick settings that converge")
        classes = list(m.get_labels())
        # LIBLINEAR prints objectives with %lf (6 decimals): also recompute from
        # the returned model is impossible (alpha is not returned), so keep them.
        p_te, _, _ = llu.predict(yte.astype(np.float64), xte64, m, "-q")
        p_tr, _, _ = llu.predict(ytr.astype(np.float64), xtr64, m, "-q")
        te = 100.0 * float(np.mean(np.array(p_te) != yte))
        tr = 100.0 * float(np.mean(np.array(p_tr) != ytr))
        rec = dict(cfg)
        rec.update({
            "options": opts,
            "classes": classes,
            "dual_objectives": {str(c): -o if False else o for c, o in zip(classes, objs)},
            "iterations": dict(zip(map(str, classes), iters)),
            "test_error_percent": te,
            "train_error_percent": tr,
            "fit_seconds": secs,
        })
        print(opts, "test error %.2f%% train %.2f%% %.2fs" % (te, tr, secs), "iters", iters, file=sys.stderr)
        out["configs"].append(rec)
    path = os.path.join(os.path.dirname(__file__), "..", "crates", "mrbm-eval", "tests", "fixtures", "liblinear_mnist.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", os.path.normpath(path), file=sys.stderr)


SWITCH = {"loss": "squared_hinge", "s": 1, "c": 0.1, "eps": 0.1, "bias": 1.0, "standardize": True}


def standardise(xtr, xte):
    """As mrbm's SvmConfig::standardize: training mean and population std in
    float64, 1/std (1 where std <= 1e-12), result rounded to float32."""
    x64 = xtr.astype(np.float64)
    mean = x64.mean(axis=0)
    sd = np.sqrt(((x64 - mean) ** 2).mean(axis=0))
    inv = np.where(sd > 1e-12, 1.0 / np.where(sd > 1e-12, sd, 1.0), 1.0)
    f = lambda x: ((x.astype(np.float64) - mean) * inv).astype(np.float32)
    return f(xtr), f(xte)


def switch_fixture():
    images, labels = mnist_split.mnist_t10k()
    xtr, ytr, xte, yte, _ = mnist_split.split(images, labels)
    ztr, zte = standardise(xtr, xte)
    ztr64, zte64 = ztr.astype(np.float64), zte.astype(np.float64)
    cfg = SWITCH
    opts = f"-s {cfg['s']} -c {cfg['c']} -e {cfg['eps']} -B {cfg['bias']}"
    m, log, secs = train_capture(ytr.astype(np.float64), ztr64, opts)
    classes = list(m.get_labels())
    # One chunk per class: its dual's "#iter", then any switch and Newton lines.
    chunks = log.split("optimization finished")[1:]
    per = {}
    for k, (c, chunk) in enumerate(zip(classes, chunks)):
        w, b = m.get_decfun(k)
        # LIBLINEAR's w stops at the last feature that is ever non-zero.
        w = np.pad(np.array(w, dtype=np.float64), (0, ztr.shape[1] - len(w)))
        wb = b / cfg["bias"]
        yk = np.where(ytr == c, 1.0, -1.0)
        margin = np.maximum(0.0, 1.0 - yk * (ztr64 @ w + b))
        primal = 0.5 * (w @ w + wb * wb) + cfg["c"] * float(margin @ margin)
        per[str(c)] = {
            "iterations": int(re.search(r"#iter = (\d+)", chunk).group(1)),
            "dual_objective": float(re.search(r"Objective value = (\S+)", chunk).group(1)),
            "switched": "Switching to use -s 2" in chunk,
            "newton_steps": len(re.findall(r"^iter +\d+ f ", chunk, re.M)),
            "primal_objective": primal,
        }
    # The optimum itself, for scale: LIBLINEAR's primal solver (-s 2) with a
    # tolerance 1000x tighter than the switch's.
    tight = f"-s 2 -c {cfg['c']} -e {cfg['eps'] * 1e-3} -B {cfg['bias']} -q"
    mo = llu.train(ll.problem(ytr.astype(np.float64), ztr64), ll.parameter(tight))
    for k, c in enumerate(mo.get_labels()):
        w, b = mo.get_decfun(k)
        w = np.pad(np.array(w, dtype=np.float64), (0, ztr.shape[1] - len(w)))
        yk = np.where(ytr == c, 1.0, -1.0)
        margin = np.maximum(0.0, 1.0 - yk * (ztr64 @ w + b))
        wb = b / cfg["bias"]
        per[str(c)]["primal_optimum"] = 0.5 * (w @ w + wb * wb) + cfg["c"] * float(margin @ margin)
    p_te, _, _ = llu.predict(yte.astype(np.float64), zte64, m, "-q")
    p_tr, _, _ = llu.predict(ytr.astype(np.float64), ztr64, m, "-q")
    out = dict(cfg)
    out.update({
        "source": "liblinear-official 2.50.0 (tools/liblinear_parity.py)",
        "options": opts,
        "optimum_options": tight,
        "classes": classes,
        "per_class": per,
        "test_error_percent": 100.0 * float(np.mean(np.array(p_te) != yte)),
        "train_error_percent": 100.0 * float(np.mean(np.array(p_tr) != ytr)),
        "fit_seconds": secs,
    })
    print(opts, "standardised pixels: test error %.2f%%" % out["test_error_percent"],
          "switched", sum(v["switched"] for v in per.values()), "of", len(per), "%.1fs" % secs, file=sys.stderr)
    path = os.path.join(os.path.dirname(__file__), "..", "crates", "mrbm-eval", "tests", "fixtures", "liblinear_switch.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", os.path.normpath(path), file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:] == ["--switch"]:
        switch_fixture()
    else:
        main()
        switch_fixture()
