"""Reference values for the mrbm-eval SVM on the features of a trained
quickstart model, from liblinear-official 2.50.

Runs `mrbm run experiments/quickstart.toml` into a scratch cache, then for
N = 1 and N = 255:
  * copies the trained model (37 KB) to
    crates/mrbm-eval/tests/fixtures/quickstart_model_N{N}.safetensors, so the
    Rust test can compute the same features itself from the built-in
    synthetic data (6 MB of features per N would be too big to commit);
  * trains LIBLINEAR on mrbm's train/test feature artifacts with the
    configurations below and records test/train error, the per-class dual
    objective and iterations;
  * records sums of the features so the Rust test proves it reproduced them.
Everything goes to crates/mrbm-eval/tests/fixtures/liblinear_quickstart.json.

    tools/reference-env.sh tools/requirements-eval.txt   # makes .venv/
    cargo build --release -p mrbm-runner
    MRBM=target/release/mrbm .venv/bin/python tools/liblinear_quickstart.py
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file

sys.path.insert(0, os.path.dirname(__file__))
from liblinear_parity import train_capture  # noqa: E402
from liblinear import liblinearutil as llu  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), ".."))
FIXTURES = os.path.join(ROOT, "crates", "mrbm-eval", "tests", "fixtures")

# The quickstart's own settings (C = 1, eps 0.1) are not usable here: on these
# nearly separable features LIBLINEAR 2.50 stops at its 300-iteration cap
# for two classes (and switches -s 1 to its primal solver). These converge.
CONFIGS = [
    {"loss": "squared_hinge", "s": 1, "c": 0.1, "eps": 0.01, "bias": 1.0},
    {"loss": "squared_hinge", "s": 1, "c": 0.1, "eps": 0.001, "bias": 1.0},
    {"loss": "hinge", "s": 3, "c": 0.01, "eps": 0.01, "bias": 1.0},
]


def entries_by_stage(cache):
    out = {}
    for m in glob.glob(os.path.join(cache, "entries", "*", "manifest.json")):
        with open(m) as f:
            man = json.load(f)
        out[man["stage_id"]] = os.path.dirname(m)
    return out


def feature_stats(x):
    x64 = x.astype(np.float64)
    return {"rows": int(x.shape[0]), "dim": int(x.shape[1]),
            "sum": float(x64.sum()), "sum_sq": float((x64 * x64).sum())}


def main():
    mrbm = os.environ.get("MRBM", os.path.join(ROOT, "target", "release", "mrbm"))
    cache = tempfile.mkdtemp(prefix="mrbm-quickstart-")
    try:
        subprocess.run([mrbm, "--cache", cache, "run", "experiments/quickstart.toml", "--quiet",
                        "--device", "cpu"], cwd=ROOT, check=True)
        by_stage = entries_by_stage(cache)
        with open(os.path.join(ROOT, "experiments", "quickstart.toml"), "rb") as f:
            import tomllib
            qs = tomllib.load(f)
        out = {
            "source": "liblinear-official 2.50.0 (tools/liblinear_quickstart.py)",
            "mrbm": subprocess.run([mrbm, "--version"], capture_output=True, text=True).stdout.strip(),
            "dataset": qs["stages"]["shapes"]["params"],
            "split": qs["stages"]["split"]["params"],
            "models": {},
        }
        for n in (1, 255):
            model_dir = by_stage[f"train[N={n}]"]
            name = f"quickstart_model_N{n}.safetensors"
            shutil.copyfile(os.path.join(model_dir, "out", "model.safetensors"), os.path.join(FIXTURES, name))
            tr = load_file(os.path.join(by_stage[f"train_features[N={n}]"], "out", "features.safetensors"))
            te = load_file(os.path.join(by_stage[f"test_features[N={n}]"], "out", "features.safetensors"))
            xtr, ytr = tr["features"].astype(np.float64), tr["labels"].astype(np.float64)
            xte, yte = te["features"].astype(np.float64), te["labels"].astype(np.float64)
            rec = {"model": name, "train_features": feature_stats(tr["features"]),
                   "test_features": feature_stats(te["features"]), "configs": []}
            for cfg in CONFIGS:
                opts = f"-s {cfg['s']} -c {cfg['c']} -e {cfg['eps']} -B {cfg['bias']}"
                m, log, secs = train_capture(ytr, xtr, opts)
                if "reaching max number" in log or "Switching" in log:
                    raise SystemExit(f"N={n} {opts}: LIBLINEAR hit its iteration limit")
                objs = [float(v) for v in re.findall(r"Objective value = (\S+)", log)]
                iters = [int(v) for v in re.findall(r"#iter = (\d+)", log)]
                classes = list(m.get_labels())
                p_te, _, _ = llu.predict(yte, xte, m, "-q")
                p_tr, _, _ = llu.predict(ytr, xtr, m, "-q")
                c = dict(cfg)
                c.update({
                    "options": opts,
                    "classes": classes,
                    "dual_objectives": {str(k): o for k, o in zip(classes, objs)},
                    "iterations": dict(zip(map(str, classes), iters)),
                    "test_error_percent": 100.0 * float(np.mean(np.array(p_te) != yte)),
                    "train_error_percent": 100.0 * float(np.mean(np.array(p_tr) != ytr)),
                    "fit_seconds": secs,
                })
                print(f"N={n} {opts}: test error {c['test_error_percent']:.2f}% "
                      f"train {c['train_error_percent']:.2f}% iters {iters}", file=sys.stderr)
                rec["configs"].append(c)
            out["models"][str(n)] = rec
        path = os.path.join(FIXTURES, "liblinear_quickstart.json")
        with open(path, "w") as f:
            json.dump(out, f, indent=1)
        print("wrote", os.path.relpath(path, ROOT), file=sys.stderr)
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
