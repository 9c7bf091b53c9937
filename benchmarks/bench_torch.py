"""Torch backend speed on the default NeurALLNet: lava-dl's stock SLAYER path vs ours, one process.

stock: lava-dl as shipped (``model.reference_forward``): (N, C, H, W, T) layout, the
       image repeated over T, conv3d synapses, Python-loop CUBA dynamics and spike
ours:  ``Network.forward``: time-major and channels-last, conv2d over (batch x time)
       frames, the image convolved once and held (never repeated T times),
       event-driven convs where the input is sparse (training.event_conv), and
       fused C++ CUBA layer kernels (current; norm + voltage + spikes) of
       lava_allnet.kernels.fast_cuba

Prints ms/image for inference at batch 1 and 16 and for a training step at
batch 16 (forward, cross-entropy on output rates, backward, Adam step), the
ratios, and checks that both give identical output spikes.

    python benchmarks/bench_torch.py [--threads 2] [--repeats 5] [--model neurallnet]
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from lava_allnet.config import get_model_config
from lava_allnet.data import synth
from lava_allnet.model import build_model, reference_forward
from lava_allnet.kernels import fast_cuba


def smear_batch(size: int, n: int, seed: int = 0) -> torch.Tensor:
    imgs = [synth.render_field(synth.image_rng(seed, i % 4, i), synth.CLASS_NAMES[i % 4], size) for i in range(n)]
    return torch.from_numpy(np.stack(imgs).transpose(0, 3, 1, 2).copy())


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model", default="neurallnet")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fast_cuba.tune_malloc()  # process-wide: helps both paths
    cfg = get_model_config(args.model)
    torch.manual_seed(0)
    net = build_model(cfg)
    x16 = smear_batch(cfg.input_size, 16)
    net.calibrate(net.encode(x16))
    net.eval()
    e16 = net.encode(x16)
    y16 = torch.arange(16) % cfg.num_classes
    base = copy.deepcopy(net.state_dict())

    paths = {
        "stock": (fast_cuba.uninstall, lambda x: reference_forward(net, x)),
        "ours": (fast_cuba.install, lambda x: net(x).class_counts),
    }
    res: dict[str, dict[str, list[float]]] = {k: {} for k in paths}
    counts: dict[str, torch.Tensor] = {}
    for rnd in range(args.repeats):
        for name, (setup, forward) in paths.items():  # alternate: machine noise hits both
            setup()
            net.load_state_dict(base)
            net.eval()
            with torch.inference_mode():
                if rnd == 0:
                    counts[name] = forward(e16)
                res[name].setdefault("inference_b1", []).append(timed(lambda: forward(e16[:1]), 3))
                res[name].setdefault("inference_b16", []).append(timed(lambda: forward(e16), 1) / 16)
            net.train()
            opt = torch.optim.Adam(net.parameters(), lr=1e-3)

            def step() -> None:
                c = forward(e16)
                loss = F.cross_entropy(10 * c / (net.population * net.time_steps), y16)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()

            res[name].setdefault("train_step_b16", []).append(timed(step, 1) / 16)
    fast_cuba.install()
    print(f"model {cfg.name}: input {cfg.input_size}x{cfg.input_size}, T={cfg.time_steps}, "
          f"{net.num_parameters():,} parameters, {args.threads} threads, median of {args.repeats}")
    print(f"{'ms/image':<18}{'stock':>10}{'ours':>10}{'ratio':>9}")
    for key in ("inference_b1", "inference_b16", "train_step_b16"):
        s = statistics.median(res["stock"][key]) * 1000
        o = statistics.median(res["ours"][key]) * 1000
        print(f"{key:<18}{s:>10.1f}{o:>10.1f}{s / o:>8.1f}x")
    print(f"identical output spikes: {torch.equal(counts['stock'], counts['ours'])}")


if __name__ == "__main__":
    main()
