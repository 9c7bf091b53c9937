"""Torch backend speed on the default NeurALLNet: stock lava-dl path vs ours, one process.

stock: lava-dl's SLAYER code as shipped (conv3d synapses, Python-loop CUBA dynamics)
ours:  conv2d over (batch x time) frames + the C++ CUBA dynamics of training.fast_cuba

Prints ms/image for inference at batch 1 and 16 and for a training step at
batch 16 (forward, cross-entropy on output rates, backward, Adam step), the
ratios, and checks that both paths give identical spikes.

    python benchmarks/bench_torch.py [--threads 2] [--repeats 5] [--model neurallnet]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import lava_allnet  # noqa: F401
import numpy as np
import torch
import torch.nn.functional as F

from lava_allnet.config import get_model_config
from lava_allnet.data import synth
from lava_allnet.model import build_model, stock_synapses
from training import fast_cuba


def smear_batch(size: int, n: int, seed: int = 0) -> torch.Tensor:
    imgs = [synth.render_field(synth.image_rng(seed, i % 4, i), synth.CLASS_NAMES[i % 4], size) for i in range(n)]
    return torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy())


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="neurallnet")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fast_cuba.tune_malloc()  # process-wide: helps both paths equally
    cfg = get_model_config(args.model)
    torch.manual_seed(0)
    net = build_model(cfg)
    x16 = smear_batch(cfg.input_size, 16)
    net.calibrate(net.encode(x16))
    net.eval()
    e16 = net.encode(x16)
    y16 = torch.arange(16) % cfg.num_classes

    def paths():
        return {
            "stock": (fast_cuba.uninstall, stock_synapses),
            "ours": (fast_cuba.install, _nullcontext),
        }

    results: dict[str, dict[str, list[float]]] = {"stock": {}, "ours": {}}
    outputs = {}
    grads = {}
    base_state = copy.deepcopy(net.state_dict())
    for rnd in range(args.repeats):
        for name, (setup, ctx) in paths().items():  # alternate: machine noise hits both
            setup()
            with ctx(), torch.inference_mode():
                if rnd == 0:
                    outputs[name] = net(e16, record=True)
                results[name].setdefault("inference_b1", []).append(
                    statistics.median(timed(lambda: net(e16[:1]), 3)))
                results[name].setdefault("inference_b16", []).append(
                    statistics.median(timed(lambda: net(e16), 1)) / 16)
            net.load_state_dict(base_state)
            net.train()
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)

            def step():
                out = net(e16)
                loss = F.cross_entropy(10 * out.class_counts / (net.population * net.time_steps), y16)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                return loss

            with ctx():
                if rnd == 0:
                    step()
                    grads[name] = {k: p.grad.detach().clone() for k, p in net.named_parameters() if p.grad is not None}
                    net.load_state_dict(base_state)

                def train_step():
                    step()
                    opt.step()

                results[name].setdefault("train_step_b16", []).append(
                    statistics.median(timed(train_step, 1)) / 16)
            net.load_state_dict(base_state)
            net.eval()
    fast_cuba.install()

    a, b = outputs["stock"], outputs["ours"]
    same = torch.equal(a.class_counts, b.class_counts) and all(
        torch.equal(a.stage_steps[k], b.stage_steps[k]) for k in a.stage_steps)
    rel = max(float((grads["stock"][k] - grads["ours"][k]).abs().max() / (grads["stock"][k].abs().max() + 1e-30))
              for k in grads["stock"])
    print(f"model {cfg.name}: input {cfg.input_size}x{cfg.input_size}, T={cfg.time_steps}, "
          f"{net.num_parameters():,} parameters, {args.threads} threads, median of {args.repeats}")
    print(f"{'ms/image':<18}{'stock':>10}{'ours':>10}{'ratio':>9}")
    for key in ("inference_b1", "inference_b16", "train_step_b16"):
        s = statistics.median(results["stock"][key]) * 1000
        o = statistics.median(results["ours"][key]) * 1000
        print(f"{key:<18}{s:>10.1f}{o:>10.1f}{s / o:>8.1f}x")
    print(f"identical spikes in every layer and step: {same}")
    print(f"largest relative weight-gradient difference (conv2d vs conv3d summation order): {rel:.2e}")


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


if __name__ == "__main__":
    main()
