"""Convert pytorch-fid's Inception weights to the safetensors file mrbm reads.

The FID weights (a port of TensorFlow's 2015-12-05 Inception graph) are
published by pytorch-fid at

    https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth

("6726825d" is the first 8 hex digits of the file's SHA-256, torch.hub's
convention; this script checks it). mrbm never downloads: fetch the file
yourself, then

    python -m venv .venv && .venv/bin/pip install -r tools/requirements-eval.txt
    .venv/bin/python tools/fid_weights.py --pth pt_inception-2015-12-05-6726825d.pth --out pt_inception-2015-12-05.safetensors

and give the output to a `fid_stats` stage (input `weights`, or the
MRBM_FID_WEIGHTS environment variable). The weights are loaded into
pytorch-fid's own FID Inception (strict: every name and shape must match)
before being written, with their PyTorch names (fc.* and BatchNorm's
num_batches_tracked are left out: pool3 does not use them).

`--random SEED` instead writes the seeded random weights that the parity
tests use (identical to mrbm_eval::inception::random_weights(SEED)).
"""
import argparse
import hashlib
import sys
import os

import numpy as np
import torch
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(__file__))
import fid_common  # noqa: E402

EXPECTED_SHA256_PREFIX = "6726825d"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--pth", help="pt_inception-2015-12-05-6726825d.pth")
    src.add_argument("--random", type=int, metavar="SEED", help="write seeded random weights instead")
    ap.add_argument("--out", required=True)
    ap.add_argument("--skip-hash", action="store_true", help="do not check the SHA-256 prefix")
    a = ap.parse_args()

    if a.pth:
        digest = hashlib.sha256(open(a.pth, "rb").read()).hexdigest()
        if not a.skip_hash and not digest.startswith(EXPECTED_SHA256_PREFIX):
            raise SystemExit(f"{a.pth}: SHA-256 {digest} does not start with {EXPECTED_SHA256_PREFIX}; not the FID weights?")
        sd = torch.load(a.pth, map_location="cpu")
        _, inner = fid_common.build_pytorch_fid(state_dict=sd)
        meta = {"source": os.path.basename(a.pth), "sha256": digest}
    else:
        _, inner = fid_common.build_pytorch_fid(seed=a.random)
        meta = {"source": f"random seed {a.random}"}
    names = dict(fid_common.expected_tensors(inner))
    sd = inner.state_dict()
    tensors = {k: np.ascontiguousarray(sd[k].detach().cpu().numpy().astype(np.float32)) for k in names}
    save_file(tensors, a.out, metadata=meta)
    print(f"wrote {a.out}: {len(tensors)} tensors, {sum(t.size for t in tensors.values())} values", file=sys.stderr)


if __name__ == "__main__":
    main()
