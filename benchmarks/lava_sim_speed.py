"""Lava CPU simulator speed: stock vs fast fixed-point models, per-process cost.

    .venv/bin/python benchmarks/lava_sim_speed.py conv --steps 8
    .venv/bin/python benchmarks/lava_sim_speed.py chain --sizes 5 10 20 40

``conv``: 5 x (Conv 3x3 stride 2 pad 1 + LIF), 128x128x3 binary input from a
RingBuffer, channels 3->16->32->64->128->128; checks stock == fast spikes.
``chain``: RingBuffer -> (Dense 4x4 -> LIF(4)) * k -> sink, N processes.
ms/step excludes compile and process start-up (a 1-step warm-up run).
"""
from __future__ import annotations

import argparse
import time
import typing as ty

import numpy as np

import lava_allnet  # noqa: F401  (the Python 3.11 patch, before this file imports lava)

from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.io.sink import RingBuffer as Sink
from lava.proc.io.source import RingBuffer as Source
from lava.proc.lif.process import LIF

from hw_targets.lava_models import fast_exception_map


def _timed_run(src: ty.Any, steps: int, cfg: Loihi2SimCfg) -> float:
    """ms per step of ``steps`` steps after a 1-step warm-up run."""
    src.run(condition=RunSteps(num_steps=1), run_cfg=cfg)
    t0 = time.perf_counter()
    src.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
    return (time.perf_counter() - t0) / steps * 1e3


def conv_net(steps: int, fast: bool, seed: int = 0) -> ty.Tuple[float, np.ndarray]:
    rng = np.random.default_rng(seed)
    chans = [3, 16, 32, 64, 128, 128]
    shape = (128, 128, 3)
    src = Source(data=(rng.random(shape + (steps + 1,)) < 0.2).astype(np.int32))
    port = src.s_out
    for c_in, c_out in zip(chans[:-1], chans[1:]):
        conv = Conv(weight=rng.integers(-40, 64, (c_out, 3, 3, c_in)),
                    input_shape=shape, stride=2, padding=1)
        shape = conv.output_shape
        lif = LIF(shape=shape, du=1024, dv=512, vth=40)
        port.connect(conv.s_in)
        conv.a_out.connect(lif.a_in)
        port = lif.s_out
    sink = Sink(shape=shape, buffer=steps + 1)
    port.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag="fixed_pt",
                       exception_proc_model_map=fast_exception_map() if fast else None)
    try:
        ms = _timed_run(src, steps, cfg)
        return ms, sink.data.get()
    finally:
        src.stop()


def chain(n_procs: int, steps: int, fast: bool) -> float:
    """ms/step of a chain of ``n_procs`` (even) Dense/LIF processes of size 4."""
    src = Source(data=np.ones((4, steps + 1), np.int32))
    port = src.s_out
    for _ in range(n_procs // 2):
        dense = Dense(weights=np.eye(4, dtype=np.int32) * 100)
        lif = LIF(shape=(4,), du=0, dv=0, vth=10)
        port.connect(dense.s_in)
        dense.a_out.connect(lif.a_in)
        port = lif.s_out
    sink = Sink(shape=(4,), buffer=steps + 1)
    port.connect(sink.a_in)
    cfg = Loihi2SimCfg(select_tag="fixed_pt",
                       exception_proc_model_map=fast_exception_map() if fast else None)
    try:
        return _timed_run(src, steps, cfg)
    finally:
        src.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("conv")
    c.add_argument("--steps", type=int, default=8)
    h = sub.add_parser("chain")
    h.add_argument("--sizes", type=int, nargs="+", default=[4, 10, 20, 40])  # even
    h.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    if args.cmd == "conv":
        ms_fast, out_fast = conv_net(args.steps, fast=True)
        ms_stock, out_stock = conv_net(args.steps, fast=False)
        print(f"5-conv 128x128: stock {ms_stock:.1f} ms/step, fast {ms_fast:.1f} "
              f"ms/step, identical={np.array_equal(out_stock, out_fast)}, "
              f"output spikes={int(out_fast.sum())}")
    else:
        for n in (2 * (s // 2) for s in args.sizes):
            ms = chain(n, args.steps, fast=True)
            print(f"chain of {n} processes (+2 io): {ms:.2f} ms/step "
                  f"({ms / (n + 2):.3f} ms per process-step)")


if __name__ == "__main__":
    main()
