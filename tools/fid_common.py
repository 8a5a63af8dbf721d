"""Shared definitions for the FID tools: deterministic random weights and
images (bit-identical to crates/mrbm-eval/src/inception.rs), and pytorch-fid's
own Inception model built without downloading anything."""
import numpy as np
import torch
import torchvision

GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def mix64(z):
    z = np.asarray(z, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def splitmix_outputs(seed, start, count):
    """Outputs number start+1 .. start+count of splitmix64 seeded with `seed`."""
    k = np.arange(start + 1, start + count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        return mix64(np.uint64(seed) + k * GOLDEN)


def expected_tensors(model):
    """(name, shape) of every conv/bn tensor, sorted: the converter's contract."""
    out = []
    for name, t in model.state_dict().items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        out.append((name, tuple(t.shape)))
    return sorted(out)


def random_weights(names_shapes, seed):
    """See `random_weights` in inception.rs for the definition."""
    weights = {}
    k = 0
    for name, shape in names_shapes:
        n = int(np.prod(shape))
        z = splitmix_outputs(seed, k, n)
        k += n
        u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / float(1 << 53))
        r = 2.0 * u - 1.0
        if name.endswith("conv.weight"):
            v = r * np.sqrt(6.0 / float(np.prod(shape[1:])))
        elif name.endswith("bn.weight"):
            v = 1.0 + 0.25 * r
        elif name.endswith("bn.bias") or name.endswith("running_mean"):
            v = 0.1 * r
        else:
            v = 1.0 + 0.5 * r
        weights[name] = v.astype(np.float32).reshape(shape)
    return weights


def random_images(seed, n, c, h, w):
    """u8 images: the top byte of splitmix64 outputs 1.. in NCHW order."""
    z = splitmix_outputs(seed, 0, n * c * h * w)
    return (z >> np.uint64(56)).astype(np.uint8).reshape(n, c, h, w)


def build_pytorch_fid(state_dict=None, seed=None):
    """pytorch_fid.inception.InceptionV3([3]) (the FID pool3 network, built by
    pytorch-fid's own code) with `state_dict` (the pt_inception file's
    contents) or seeded random weights. Returns (model in eval mode, inner
    torchvision-named Inception3)."""
    import pytorch_fid.inception as I

    captured = {}
    orig_load = torchvision.models.inception.Inception3.load_state_dict

    def capture(self, sd, *a, **k):
        captured["m"] = self

    I.load_state_dict_from_url = lambda *a, **k: None  # never download
    torchvision.models.inception.Inception3.load_state_dict = capture
    try:
        model = I.InceptionV3([I.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])
    finally:
        torchvision.models.inception.Inception3.load_state_dict = orig_load
    inner = captured["m"]
    if state_dict is None:
        sd = inner.state_dict()
        for name, v in random_weights(expected_tensors(inner), seed).items():
            sd[name] = torch.from_numpy(v)
        state_dict = sd
    inner.load_state_dict(state_dict, strict=True)
    model.eval()
    return model, inner
