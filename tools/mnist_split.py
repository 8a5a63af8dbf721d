"""The deterministic MNIST t10k split shared by the Rust tests and the tools/ scripts.

The permutation is a Fisher-Yates shuffle driven by splitmix64 (Steele,
Lea & Flood 2014), chosen because it is a few lines in any language and
so reproducible bit for bit in Rust (crates/mrbm-eval/tests/common/mod.rs):

    state = seed; perm = [0, 1, ..., n-1]
    for i from n-1 down to 1:
        state += 0x9E3779B97F4A7C15 (mod 2^64)
        z = state; z = (z ^ z>>30) * 0xBF58476D1CE4E5B9; z = (z ^ z>>27) * 0x94D049BB133111EB; z ^= z>>31
        j = z mod (i+1); swap perm[i], perm[j]

Train rows are perm[:n_train] and test rows perm[n_train:], in that order.
Pixels are scaled as float32(pixel) / float32(255) (then widened to float64
for LIBLINEAR), exactly what the Rust side feeds its solver.
"""
import gzip
import os
import struct

import numpy as np

MASK = (1 << 64) - 1
SEED = 20081  # fixed; the fixture records it
N_TRAIN = 8000


def splitmix_permutation(n, seed):
    state = seed & MASK
    perm = list(range(n))
    for i in range(n - 1, 0, -1):
        state = (state + 0x9E3779B97F4A7C15) & MASK
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        z ^= z >> 31
        j = z % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndim = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def mnist_t10k(shared=None):
    shared = shared or os.environ.get("MRBM_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))
    d = os.path.join(shared, "mnist")
    images = read_idx(os.path.join(d, "t10k-images-idx3-ubyte.gz")).reshape(-1, 784)
    labels = read_idx(os.path.join(d, "t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    return images, labels


def split(images, labels, seed=SEED, n_train=N_TRAIN):
    perm = splitmix_permutation(len(labels), seed)
    x = (images.astype(np.float32) / np.float32(255.0)).astype(np.float32)
    tr, te = perm[:n_train], perm[n_train:]
    return x[tr], labels[tr], x[te], labels[te], perm
