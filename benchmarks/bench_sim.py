"""Lava simulator speed on the default NeurALLNet, measured in one run.

naive:    a fresh network per image (compile, run T + depth steps, read) with Lava's stock
          fixed_pt process models, as one would with stock NetX
streamed: one compiled network streaming all images (in-graph source, resets and counters)
          with our fast exact process models

Prints ms per step (stock vs fast process models) and images/s (naive vs streamed; streamed with
1 and 2 worker processes), with ratios, and checks that all give the same spikes.

    python benchmarks/bench_sim.py [--images 32] [--naive 2] [--model neurallnet]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hw_targets import sim
from lava_allnet.config import get_model_config
from lava_allnet.data import synth
from lava_allnet.model import build_model
from netx import format as nf
from netx.export import export


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32, help="images streamed through one network")
    ap.add_argument("--naive", type=int, default=2, help="images run naively (fresh network, stock models)")
    ap.add_argument("--model", default="neurallnet")
    ap.add_argument("--model-file", type=Path, default=None, help="use this .net instead of a calibrated random model")
    args = ap.parse_args()
    cfg = get_model_config(args.model)
    imgs = np.stack([synth.render_field(synth.image_rng(7, i % 4, i), synth.CLASS_NAMES[i % 4], cfg.input_size)
                     for i in range(max(args.images, args.naive))]).transpose(0, 3, 1, 2).copy()
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model_file
        if path is None:
            torch.manual_seed(0)
            net = build_model(cfg)
            net.calibrate(net.encode(torch.from_numpy(imgs[:16])))  # realistic activity (~10% rates)
            path = Path(tmp) / "model.net"
            export(net, path)
        spec = nf.read(path)

        t0 = time.perf_counter()
        streamed = sim.run(spec, imgs[: args.images], fast=True)
        wall_streamed = time.perf_counter() - t0
        t0 = time.perf_counter()
        two = sim.run_sharded(spec, imgs[: args.images], 2, fast=True)
        wall_two = time.perf_counter() - t0
        for name in two.counts:
            assert np.array_equal(two.counts[name], streamed.counts[name]), name

        naive_wall, naive_steps_ms = [], []
        for i in range(args.naive):
            t0 = time.perf_counter()
            r = sim.run(spec, imgs[i : i + 1], fast=False)
            naive_wall.append(time.perf_counter() - t0)
            naive_steps_ms.append(r.timing["ms_per_step"])
            for name in r.counts:
                assert np.array_equal(r.counts[name][0], streamed.counts[name][i]), (i, name)

    stock_ms = float(np.mean(naive_steps_ms))
    fast_ms = streamed.timing["ms_per_step"]
    naive_ips = args.naive / sum(naive_wall)
    streamed_ips = args.images / wall_streamed
    print(f"model: {spec.source} ({len(spec.layers)} layers), T={spec.time_steps}, "
          f"pipeline depth {int(streamed.timing['steps']) - args.images * spec.time_steps}")
    print(f"ms per step   stock process models {stock_ms:8.1f}   fast {fast_ms:6.1f}   ratio {stock_ms / fast_ms:6.1f}x")
    print(f"images/s      naive (fresh net, stock) {naive_ips:6.3f}   streamed (fast) {streamed_ips:6.2f}   "
          f"ratio {streamed_ips / naive_ips:6.1f}x")
    print(f"images/s      streamed, 1 worker {streamed_ips:6.2f}   2 workers {args.images / wall_two:6.2f}   "
          f"ratio {args.images / wall_two / streamed_ips:5.2f}x   (2 workers: {two.timing['ms_per_step']:.1f} ms per step "
          f"per worker, wall including compile)")
    print(f"streamed: compile {streamed.timing['compile_s']:.1f} s, {streamed.timing['ms_per_image']:.0f} ms/image "
          f"after compile; naive: {np.mean(naive_wall):.1f} s/image")
    print("spikes identical (naive vs streamed vs 2 workers, every layer and step): True")


if __name__ == "__main__":
    main()
