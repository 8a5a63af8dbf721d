#!/usr/bin/env python3
"""PyTorch reference of mrbm's training step, for bench/train_step.sh.

The same model as crates/mrbm-core: conv RBMs (conv2d up, conv_transpose2d
with the same kernel down) then dense RBMs, units f(x) = N sigmoid(k x),
free energy F(v) = -a.v - (N/k) sum softplus(k x), loss per layer
mean(F(v) - F(v')) with v' detached, layers detached from each other, the
sum of the layer losses minimised by Adam (lr 0.03, betas 0.9/0.999,
eps 1e-8). One step = up, down, loss, backward, Adam.

Prints one JSON line: {"impl": "pytorch", "stack": ..., "images_per_s": ...}.
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F


class Layer(torch.nn.Module):
    def __init__(self, conv, vis_shape, hidden, kernel=4, stride=2, padding=1, n_v=1, k_v=1.0, n_h=1, k_h=1.0):
        super().__init__()
        self.conv, self.stride, self.padding = conv, stride, padding
        self.n_v, self.k_v, self.n_h, self.k_h = n_v, k_v, n_h, k_h
        c, h, w = vis_shape
        if conv:
            self.w = torch.nn.Parameter(torch.randn(hidden, c, kernel, kernel) * 0.01)
            self.a = torch.nn.Parameter(torch.zeros(c))
            ho = (h + 2 * padding - kernel) // stride + 1
            wo = (w + 2 * padding - kernel) // stride + 1
            self.out_pad = (h + 2 * padding - ((ho - 1) * stride + kernel), w + 2 * padding - ((wo - 1) * stride + kernel))
            self.hid_shape = (hidden, ho, wo)
        else:
            self.w = torch.nn.Parameter(torch.randn(c * h * w, hidden) * 0.01)
            self.a = torch.nn.Parameter(torch.zeros(c * h * w))
            self.hid_shape = (hidden, 1, 1)
        self.vis_shape = vis_shape
        self.b = torch.nn.Parameter(torch.zeros(hidden))

    def pre_hidden(self, v):
        if self.conv:
            return F.conv2d(v, self.w, self.b, stride=self.stride, padding=self.padding)
        return v.flatten(1) @ self.w + self.b

    def pre_visible(self, h):
        if self.conv:
            return F.conv_transpose2d(h, self.w, self.a, stride=self.stride, padding=self.padding, output_padding=self.out_pad)
        return h @ self.w.t() + self.a

    def free_energy(self, v, x):
        a = self.a.view(1, -1, 1, 1) if self.conv else self.a
        vis = (v * a).flatten(1).sum(1) if self.conv else (v.flatten(1) * a).sum(1)
        hid = (self.n_h / self.k_h) * F.softplus(self.k_h * x).flatten(1).sum(1)
        return -vis - hid

    def loss(self, v):
        x = self.pre_hidden(v)
        h = self.n_h * torch.sigmoid(self.k_h * x)
        with torch.no_grad():
            v_rec = self.n_v * torch.sigmoid(self.k_v * self.pre_visible(h))
            if not self.conv:
                v_rec = v_rec.view_as(v)
        x_rec = self.pre_hidden(v_rec)
        return (self.free_energy(v, x) - self.free_energy(v_rec, x_rec)).mean(), h


def build(stack, size=None):
    if stack == "generation":
        shape, convs, dense = (3, 64, 64), [64, 128, 256, 256], [1000, 500, 200, 100]
    else:
        shape, convs, dense = (1, 28, 28), [32, 64], [500]
    if size:
        shape = (shape[0], size, size)
    layers = []
    for c in convs:
        l = Layer(True, shape, c)
        layers.append(l)
        shape = l.hid_shape
    for d in dense:
        l = Layer(False, shape, d)
        layers.append(l)
        shape = l.hid_shape
    return torch.nn.ModuleList(layers), layers[0].vis_shape


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--stack", default="generation", choices=["generation", "mnist"])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=None, help="square SIZE x SIZE images instead of the stack's own")
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:I] (tools/gpu-check.sh)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, shape = build(args.stack, args.size)
    model = model.to(args.device)
    opt = torch.optim.Adam(model.parameters(), lr=0.03, betas=(0.9, 0.999), eps=1e-8)
    v0 = torch.randint(0, 256, (args.batch, *shape)).float().to(args.device) / 255.0

    def step():
        opt.zero_grad(set_to_none=True)
        v, total = v0, 0.0
        for layer in model:
            loss, h = layer.loss(v)
            total = total + loss
            v = h.detach()
        total.backward()
        opt.step()
        return float(total.detach())

    for _ in range(args.warmup):
        step()
    t = time.perf_counter()
    for _ in range(args.steps):
        step()
    dt = time.perf_counter() - t
    print(json.dumps({"impl": "pytorch", "device": args.device, "stack": args.stack, "size": shape[-1], "batch": args.batch, "threads": args.threads,
                      "steps": args.steps, "seconds_per_step": dt / args.steps,
                      "images_per_s": args.batch * args.steps / dt, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
