#!/usr/bin/env python3
"""Recompute one layer's free energy from an mrbm checkpoint, independently
of the Rust code: safetensors + numpy only.

    python tools/check_checkpoint.py model.safetensors --layer 0 --inputs v.safetensors

`inputs` holds `v`, f32 [B, C, H, W] in the layer's visible shape (a dense
layer accepts any [B, ...] that flattens to its visible size). Prints JSON
{"free_energy": [...]} with F(v) = -a.v - (N_h/k_h) sum_j softplus(k_h x_j(v))
per row. With --expect, exits 1 when any value differs by more than --rtol.
Requirements: tools/requirements-checkpoint.txt.
"""
import argparse
import json
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file


def softplus(z):
    return np.logaddexp(0.0, z)


def conv2d(v, w, stride, padding):
    """v [B, C, H, W], w [O, C, k, k] -> [B, O, H', W'] (cross-correlation, like torch)."""
    b, c, h, wd = v.shape
    o, _, k, _ = w.shape
    vp = np.pad(v, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    ho = (h + 2 * padding - k) // stride + 1
    wo = (wd + 2 * padding - k) // stride + 1
    out = np.zeros((b, o, ho, wo))
    for ky in range(k):
        for kx in range(k):
            patch = vp[:, :, ky:ky + stride * (ho - 1) + 1:stride, kx:kx + stride * (wo - 1) + 1:stride]
            out += np.einsum("bchw,oc->bohw", patch, w[:, :, ky, kx])
    return out


def free_energy(layer, w, a, b, v):
    kind = layer["kind"]
    hu = layer["hidden_unit"]
    n_h, k_h = float(hu["n"]), float(hu["k"])
    v = v.astype(np.float64)
    if kind["type"] == "dense":
        vf = v.reshape(v.shape[0], -1)
        x = vf @ w.reshape(kind["visible"], kind["hidden"]) + b
        vis = vf @ a
    else:
        x = conv2d(v, w, kind["stride"], kind["padding"]) + b[None, :, None, None]
        vis = np.einsum("bchw,c->b", v, a)
    hid = (n_h / k_h) * softplus(k_h * x).reshape(x.shape[0], -1).sum(axis=1)
    return -vis - hid


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--layer", type=int, default=0, help="0-based layer index")
    ap.add_argument("--inputs", required=True, help="safetensors file with `v`")
    ap.add_argument("--expect", help="comma-separated expected free energies")
    ap.add_argument("--rtol", type=float, default=1e-4)
    args = ap.parse_args()

    with safe_open(args.model, framework="numpy") as f:
        meta = f.metadata() or {}
    if "mrbm_model" not in meta:
        sys.exit(f"{args.model}: no mrbm_model metadata")
    spec = json.loads(meta["mrbm_model"])
    if not 0 <= args.layer < len(spec["layers"]):
        sys.exit(f"layer {args.layer} out of range (the model has {len(spec['layers'])})")
    t = load_file(args.model)
    i = args.layer
    w, a, b = (t[f"layers.{i}.{p}"].astype(np.float64) for p in "wab")
    v = load_file(args.inputs)["v"]
    fe = free_energy(spec["layers"][i], w, a, b, v)
    print(json.dumps({"layer": i, "free_energy": fe.tolist()}))
    if args.expect:
        exp = np.array([float(x) for x in args.expect.split(",")])
        err = np.abs(fe - exp) / np.maximum(np.abs(exp), 1.0)
        if err.max() > args.rtol:
            sys.exit(f"mismatch: max relative error {err.max():.3e} > {args.rtol}")


if __name__ == "__main__":
    main()
