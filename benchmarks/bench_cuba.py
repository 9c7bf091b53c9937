"""Stock lava-dl vs ``lava_allnet.kernels.fast_cuba`` on a CUBA conv net, CPU, one process.

Times inference (batch 1 and 16) and a training step (batch 16: forward, MSE
loss on spike rates, backward, SGD step) with the stock CPU dynamics and with
the fast path, and checks that both give identical spikes.

    python benchmarks/bench_cuba.py [--threads 2] [--repeats 5] [--tune-malloc]
    python benchmarks/bench_cuba.py --model mypkg.models:make_net --input 3,128,128,8
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import time
from typing import Callable, Sequence

import torch
from lava.lib.dl import slayer

from lava_allnet.kernels import fast_cuba

NEURON_PARAMS = {
    "threshold": 1.25,
    "current_decay": 0.25,
    "voltage_decay": 0.03,
    "tau_grad": 0.03,
    "scale_grad": 3,
    "requires_grad": False,
}


class ConvNet(torch.nn.Module):
    """5 strided CUBA conv blocks: 3->16->32->64->128->128, 128x128 -> 4x4."""

    def __init__(self, channels: Sequence[int] = (3, 16, 32, 64, 128, 128)) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList(
            slayer.block.cuba.Conv(
                NEURON_PARAMS, c_in, c_out, 3, stride=2, padding=1, weight_scale=2
            )
            for c_in, c_out in zip(channels[:-1], channels[1:])
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: NCHWT spikes
        for block in self.blocks:
            x = block(x)
        return x


def default_model() -> torch.nn.Module:
    return ConvNet()


def _time_ab_ms(
    make: Callable[[], Callable[[], object]],
    repeats: int,
    reset: Callable[[], None],
) -> tuple[list[float], list[float]]:
    """Wall times (ms) of stock and fast, runs alternating A/B/A/B...

    The machine may be shared: alternating exposes both paths to the same
    background load. ``make`` builds the step to time (after ``reset``, which
    restores the weights), once per path.
    """
    steps = []
    for fast in (False, True):
        fast_cuba.install() if fast else fast_cuba.uninstall()
        reset()
        steps.append(make())
        steps[-1]()  # warm-up
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(repeats):
        for fast in (False, True):
            fast_cuba.install() if fast else fast_cuba.uninstall()
            start = time.perf_counter()
            steps[fast]()
            times[fast].append((time.perf_counter() - start) * 1e3)
    return times


def _inference(model: torch.nn.Module, x: torch.Tensor) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        with torch.inference_mode():
            return model(x)

    return step


def _train_step(
    model: torch.nn.Module, x: torch.Tensor, target: torch.Tensor
) -> Callable[[], float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        rate = model(x).flatten(1, -2).mean(-1)  # spike rate per output neuron
        loss = torch.nn.functional.mse_loss(rate, target)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def run(
    model_factory: Callable[[], torch.nn.Module] = default_model,
    input_shape: Sequence[int] = (3, 128, 128, 8),
    infer_batches: Sequence[int] = (1, 16),
    train_batch: int = 16,
    repeats: int = 5,
    train_repeats: int = 3,
) -> list[tuple[str, float, float]]:
    """Time stock vs fast; returns rows (name, stock ms/image, fast ms/image).

    Each case gives a median row and a min row: on a shared machine the min
    (least disturbed run) is the more reproducible number.
    """
    if not fast_cuba.available():
        raise SystemExit("fast_cuba extension unavailable; nothing to compare")
    torch.manual_seed(0)
    model = model_factory().eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    rows: list[tuple[str, float, float]] = []

    def reset() -> None:
        model.load_state_dict(state)  # same weights for both paths

    def both(name: str, make: Callable[[], Callable[[], object]], n: int, batch: int) -> None:
        stock_ms, fast_ms = _time_ab_ms(make, n, reset)
        for stat in (statistics.median, min):
            rows.append((f"{name} {stat.__name__[:3]}",
                         stat(stock_ms) / batch, stat(fast_ms) / batch))

    for batch in infer_batches:
        x = (torch.rand(batch, *input_shape) < 0.2).float()
        both(f"inference  batch {batch:>2}", lambda x=x: _inference(model, x), repeats, batch)

    # Sanity check: identical spikes on both paths.
    x = (torch.rand(2, *input_shape) < 0.2).float()
    fast_cuba.uninstall()
    ref = _inference(model, x)()
    fast_cuba.install()
    identical = torch.equal(ref, _inference(model, x)())

    model.train()
    x = (torch.rand(train_batch, *input_shape) < 0.2).float()
    with torch.no_grad():
        out_numel = model(x[:1]).flatten(1, -2).shape[1]
    target = torch.rand(train_batch, out_numel) * 0.2
    both(
        f"train step batch {train_batch:>2}",
        lambda: _train_step(model, x, target),
        train_repeats,
        train_batch,
    )
    model.load_state_dict(state)

    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"input {tuple(input_shape)} (C,H,W,T), "
          f"params {sum(p.numel() for p in model.parameters()):,}")
    print(f"{'':26} {'stock ms/img':>13} {'fast ms/img':>12} {'speed-up':>9}")
    for name, stock, fast in rows:
        print(f"{name:26} {stock:13.2f} {fast:12.2f} {stock / fast:8.2f}x")
    print(f"spikes identical stock vs fast: {identical}")
    return rows


def _load_factory(spec: str) -> Callable[[], torch.nn.Module]:
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr or "default_model")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="inference repeats")
    parser.add_argument("--train-repeats", type=int, default=3)
    parser.add_argument("--model", default=None,
                        help="model factory 'module:function' (default: 5-conv net)")
    parser.add_argument("--input", default="3,128,128,8",
                        help="input shape C,H,W,T without batch")
    parser.add_argument("--tune-malloc", action="store_true",
                        help="fast_cuba.tune_malloc() first (applies to both paths)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.tune_malloc:
        print(f"tune_malloc: {fast_cuba.tune_malloc()}")
    run(
        model_factory=_load_factory(args.model) if args.model else default_model,
        input_shape=tuple(int(v) for v in args.input.split(",")),
        repeats=args.repeats,
        train_repeats=args.train_repeats,
    )


if __name__ == "__main__":
    main()
