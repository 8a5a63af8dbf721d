"""PyTorch reference of the coupled forward/backward sigmoid networks
(DCIM; Flach, Shekhovtsov & Fikar, "Generative learning for deep networks")
as crates/mrbm-dcim implements them. A reference only, never a product
dependency (bench/reference/dcim_requirements.txt).

Two jobs:

  python bench/reference/dcim.py fixture OUT.json
      Loss and gradients of objectives 16, 21 and 22 on a tiny dense net
      and a tiny conv net (strided conv with an output padding in its
      reverse), written with the nets' parameters and inputs, for
      crates/mrbm-dcim/tests/parity.rs (to 1e-5).

  python bench/reference/dcim.py bench --mrbm BIN [--threads 2 --batch 64]
      Epoch time (8,000 images) of one training step per batch, MLP
      784-512-512-10 and the paper's CNN, objective 21, PyTorch and mrbm
      (BIN = the `dcim_bench` example) on the same CPU, in one run; prints
      both and the ratio. Timings, not tests.

The model (0/1 units): forward x^k = S(W^k x^(k-1) + c^k), softmax at the
top; reverse x^(k-1) = S(W^k^T x^k + c^(k-1)) (conv: conv_transpose2d with
the same kernel); loss = -log p(y|x) + w * mean over pixels of the
Bernoulli cross-entropy of the image (grey levels as soft targets).
"""

import argparse
import json
import subprocess
import sys
import time

import torch
import torch.nn.functional as F


def shapes(inp, layers):
    out = [("map", list(inp))]
    for l in layers:
        kind, s = out[-1]
        if isinstance(l, int):
            out.append(("flat", [l]))
        else:
            win, st, k = l
            c, h, w = s
            out.append(("map", [k, (h - win) // st + 1, (w - win) // st + 1]))
    return out


class Net:
    def __init__(self, inp, layers, gen):
        self.inp, self.layers, self.shapes = inp, layers, shapes(inp, layers)
        self.w, self.c = [], []
        for k, l in enumerate(layers):
            kind, s = self.shapes[k]
            if isinstance(l, int):
                n_in = 1
                for d in s:
                    n_in *= d
                dims = (n_in, l)
                fan = n_in + l
            else:
                win, _, kk = l
                dims = (kk, s[0], win, win)
                fan = (s[0] + kk) * win * win
            lim = (6.0 / fan) ** 0.5
            self.w.append(((torch.rand(dims, generator=gen) * 2 - 1) * lim).requires_grad_())
        for kind, s in self.shapes:
            n = s[0]
            # non-zero biases, so the parity covers them
            self.c.append((torch.rand(n, generator=gen) * 0.2 - 0.1).requires_grad_())

    def params(self):
        return self.w + self.c

    def pre_up(self, k, x):
        l = self.layers[k - 1]
        if isinstance(l, int):
            return x.flatten(1) @ self.w[k - 1] + self.c[k]
        return F.conv2d(x, self.w[k - 1], self.c[k], stride=l[1])

    def pre_down(self, k, x):
        l = self.layers[k - 1]
        kind, s = self.shapes[k - 1]
        if isinstance(l, int):
            f = x.flatten(1) @ self.w[k - 1].t()
            if kind == "flat":
                return f + self.c[k - 1]
            return f.reshape(-1, *s) + self.c[k - 1].reshape(1, -1, 1, 1)
        win, st, _ = l
        xs = x if x.dim() == 4 else x.reshape(-1, *self.shapes[k][1])
        pad = (s[1] - win) % st
        return F.conv_transpose2d(xs, self.w[k - 1], self.c[k - 1], stride=st, output_padding=pad)

    def forward(self, x0):
        d = len(self.layers)
        x, means = x0, []
        for k in range(1, d):
            x = torch.sigmoid(self.pre_up(k, x))
            means.append(x)
        return means, self.pre_up(d, x).flatten(1)

    def reverse_from(self, m, xm):
        x = xm
        for k in range(m, 1, -1):
            x = torch.sigmoid(self.pre_down(k, x))
        return self.pre_down(1, x)

    def loss(self, x0, y, objective, top_state=None, reverse_weight=1.0):
        d = len(self.layers)
        means, logits = self.forward(x0)
        cls = F.cross_entropy(logits, y)
        if objective == "16":
            return cls, None
        if objective == "21":
            eta = self.reverse_from(d, F.one_hot(y, self.layers[-1]).float())
        else:
            eta = self.reverse_from(d - 1, top_state)
        rev = F.binary_cross_entropy_with_logits(eta, x0, reduction="mean")
        return cls + reverse_weight * rev, rev


def flat(t):
    return [float(v) for v in t.detach().reshape(-1).tolist()]


def fixture(path):
    gen = torch.Generator().manual_seed(7)
    cases = []
    for name, inp, layers, batch in [
        ("dense", [1, 4, 4], [6, 5, 3], 4),
        ("conv", [1, 7, 7], [[3, 1, 2], [2, 2, 3], 4, 3], 4),
    ]:
        net = Net(inp, layers, gen)
        x0 = torch.rand((batch, *inp), generator=gen)
        y = torch.randint(0, layers[-1], (batch,), generator=gen)
        kind, top_shape = net.shapes[-2]
        top = (torch.rand((batch, *top_shape), generator=gen) < 0.5).float()
        case = {
            "name": name,
            "input": inp,
            "layers": layers,
            "x0": flat(x0),
            "labels": [int(v) for v in y.tolist()],
            "top_state": flat(top),
            "weights": [flat(w) for w in net.w],
            "biases": [flat(c) for c in net.c],
            "objectives": {},
        }
        for obj in ["16", "21", "22"]:
            for p in net.params():
                p.grad = None
            total, rev = net.loss(x0, y, obj, top)
            total.backward()
            case["objectives"][obj] = {
                "loss": float(total.detach()),
                "reverse_per_pixel": None if rev is None else float(rev.detach()),
                "grad_weights": [flat(w.grad if w.grad is not None else torch.zeros_like(w)) for w in net.w],
                "grad_biases": [flat(c.grad if c.grad is not None else torch.zeros_like(c)) for c in net.c],
            }
        cases.append(case)
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f)
        f.write("\n")
    print(f"wrote {path}")


PAPER_CNN = [[3, 1, 32], [3, 1, 32], [2, 2, 32], [3, 1, 64], [3, 1, 64], [2, 2, 64], 50, 10]


def bench_torch(arch, batch, batches, threads):
    torch.set_num_threads(threads)
    layers = [512, 512, 10] if arch == "mlp" else PAPER_CNN
    gen = torch.Generator().manual_seed(1)
    net = Net([1, 28, 28], layers, gen)
    opt = torch.optim.Adam(net.params(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8)
    x = torch.rand((batch, 1, 28, 28), generator=gen)
    y = torch.randint(0, 10, (batch,), generator=gen)

    def step():
        opt.zero_grad()
        loss, _ = net.loss(x, y, "21")
        loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(batches):
        step()
    return batch * batches / (time.perf_counter() - t)


def bench(args):
    """`args.rounds` rounds, each timing both tools on both networks, so a
    slow minute of a shared machine hits both alike; prints the medians and
    the lowest and highest ratio of one round."""
    from statistics import median
    rates = {arch: ([], []) for arch in ["mlp", "cnn"]}
    for _ in range(args.rounds):
        for arch in ["mlp", "cnn"]:
            batches = args.batches_mlp if arch == "mlp" else args.batches_cnn
            ref = bench_torch(arch, args.batch, batches, args.threads)
            out = subprocess.run(
                [args.mrbm, "--arch", arch, "--batch", str(args.batch), "--batches", str(batches),
                 "--threads", str(args.threads)],
                check=True, capture_output=True, text=True,
            ).stdout
            ours = json.loads(out.strip().splitlines()[-1])["images_per_s"]
            rates[arch][0].append(ours)
            rates[arch][1].append(ref)
    rows = []
    for arch, (ours_all, ref_all) in rates.items():
        ours, ref = median(ours_all), median(ref_all)
        per_round = [a / b for a, b in zip(ours_all, ref_all)]
        rows.append((arch, ours, ref))
        epoch = 8000
        print(f"{arch}: mrbm {ours:8.1f} img/s ({epoch / ours:6.1f} s/epoch of 8,000)   "
              f"pytorch {torch.__version__} {ref:8.1f} img/s ({epoch / ref:6.1f} s/epoch)   "
              f"ratio {ours / ref:.2f}x   [rounds: {min(per_round):.2f}-{max(per_round):.2f}x over {len(per_round)}]",
              flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    fx = sub.add_parser("fixture")
    fx.add_argument("out")
    b = sub.add_parser("bench")
    b.add_argument("--mrbm", required=True, help="the dcim_bench example binary")
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--batches-mlp", type=int, default=40)
    b.add_argument("--batches-cnn", type=int, default=8)
    b.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    if a.cmd == "fixture":
        fixture(a.out)
    else:
        bench(a)


if __name__ == "__main__":
    sys.exit(main())
