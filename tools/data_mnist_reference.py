#!/usr/bin/env python3
"""Independent reference values for the MNIST t10k test in crates/mrbm-data.

Reads the gzip IDX files with numpy only (no code shared with the Rust
reader) and prints the figures that tests/real_data.rs records:
shape, first labels, label counts, the total pixel sum, per-class pixel sums
and the pixel sums of a few chosen images.

    python3 tools/data_mnist_reference.py ../shared/data/mnist
"""
import gzip
import os
import sys
from pathlib import Path

import numpy as np


def idx(path):
    raw = gzip.open(path, "rb").read()
    ndim = raw[3]
    dims = np.frombuffer(raw[4:4 + 4 * ndim], dtype=">u4")
    data = np.frombuffer(raw[4 + 4 * ndim:], dtype=np.uint8)
    return data.reshape(tuple(int(d) for d in dims))


def main():
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(os.environ.get("MRBM_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "mnist")
    x = idx(root / "t10k-images-idx3-ubyte.gz")
    y = idx(root / "t10k-labels-idx1-ubyte.gz")
    print("shape", x.shape, "labels", y.shape)
    print("first labels", y[:10].tolist())
    print("label counts", np.bincount(y, minlength=10).tolist())
    print("pixel sum", int(x.astype(np.int64).sum()))
    per_class = [int(x[y == c].astype(np.int64).sum()) for c in range(10)]
    print("pixel sum per class", per_class)
    chosen = [0, 1, 2, 4999, 9999]
    print("pixel sum of images", chosen, [int(x[i].astype(np.int64).sum()) for i in chosen])
    print("pixel x[0][14][7..21]", x[0, 14, 7:21].tolist())


if __name__ == "__main__":
    main()
