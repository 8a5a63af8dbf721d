"""Reference values for mrbm-eval's FID from pytorch-fid 0.3.0.

Writes crates/mrbm-eval/tests/fixtures/fid_parity.safetensors:
  - features_celeba [4, 2048]: pool3 features of celeba-sample/000001..4.jpg
    (decoded as pytorch-fid does: PIL, convert('RGB'), ToTensor), with the
    seeded random weights (fid_common.random_weights, seed WEIGHTS_SEED);
    celeba_checksum [4] i64: sum over pixels of value * (index % 251 + 1),
    so the Rust test can tell a JPEG-decoder difference from a network one;
  - features_random [4, 2048]: same for fid_common.random_images(IMAGES_SEED, 4, 3, 64, 48);
  - feats_a, feats_b [200, 32] f32 and their numpy statistics mu_a, sigma_a,
    mu_b, sigma_b (f64, np.cov rowvar=False) and fid_ab [1]: pytorch_fid's
    calculate_frechet_distance on them.
No image data is stored.

    MRBM_SHARED_DATA=../shared/data .venv/bin/python tools/fid_parity.py
"""
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.numpy import save_file

sys.path.insert(0, os.path.dirname(__file__))
import fid_common  # noqa: E402
from pytorch_fid.fid_score import calculate_frechet_distance  # noqa: E402

WEIGHTS_SEED = 7
IMAGES_SEED = 11


def checksum(u8):
    flat = u8.reshape(-1).astype(np.int64)
    return int(np.sum(flat * (np.arange(flat.size, dtype=np.int64) % 251 + 1)))


def feats(model, x):
    with torch.no_grad():
        return model(torch.from_numpy(x))[0].squeeze(3).squeeze(2).numpy().astype(np.float32)


def main():
    torch.set_num_threads(int(os.environ.get("THREADS", "2")))
    shared = os.environ.get("MRBM_SHARED_DATA", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data"))
    model, _ = fid_common.build_pytorch_fid(seed=WEIGHTS_SEED)
    imgs = []
    for i in range(1, 5):
        im = Image.open(os.path.join(shared, "celeba-sample", f"{i:06d}.jpg")).convert("RGB")
        imgs.append(np.asarray(im).transpose(2, 0, 1))  # CHW u8
    celeba = np.stack(imgs)
    # torchvision ToTensor: u8 / 255 in float32.
    f_celeba = feats(model, celeba.astype(np.float32) / np.float32(255))
    rnd = fid_common.random_images(IMAGES_SEED, 4, 3, 64, 48)
    f_random = feats(model, rnd.astype(np.float32) / np.float32(255))

    rng = np.random.default_rng(3)
    fa = rng.normal(size=(200, 32)).astype(np.float32)
    mix = rng.normal(size=(32, 32)) / 6.0
    fb = (rng.normal(size=(200, 32)) @ mix + 0.3).astype(np.float32)
    stats = {}
    for k, f in (("a", fa), ("b", fb)):
        f64 = f.astype(np.float64)
        stats["mu_" + k] = np.mean(f64, axis=0)
        stats["sigma_" + k] = np.cov(f64, rowvar=False)
    fid = calculate_frechet_distance(stats["mu_a"], stats["sigma_a"], stats["mu_b"], stats["sigma_b"])
    out = {
        "features_celeba": f_celeba,
        "celeba_checksum": np.array([checksum(c) for c in celeba], dtype=np.int64),
        "features_random": f_random,
        "feats_a": fa,
        "feats_b": fb,
        "fid_ab": np.array([fid], dtype=np.float64),
    }
    out.update(stats)
    path = os.path.join(os.path.dirname(__file__), "..", "crates", "mrbm-eval", "tests", "fixtures", "fid_parity.safetensors")
    save_file(out, path, metadata={"weights_seed": str(WEIGHTS_SEED), "images_seed": str(IMAGES_SEED), "celeba_shape": str(list(celeba.shape)), "source": "pytorch-fid 0.3.0 via tools/fid_parity.py"})
    print("celeba", celeba.shape, "feature range", f_celeba.min(), f_celeba.max(), "random", f_random.min(), f_random.max(), "fid", fid, file=sys.stderr)
    print("wrote", os.path.normpath(path), file=sys.stderr)


if __name__ == "__main__":
    main()
