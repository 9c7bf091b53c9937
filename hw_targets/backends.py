"""Backends behind one interface: torch | sim | sim-float | loihi2.

Each takes a validated NetworkSpec and uint8 images (N, 3, S, S) and returns
per-stage message counts per window step plus output-neuron counts; the
Result objects are then assembled the same way for all of them.
"""
from __future__ import annotations

import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from lava_allnet.errors import BackendUnavailable
from netx import format as nf

BACKENDS = ("sim", "sim-float", "torch", "loihi2")


@dataclass
class RawRun:
    stage_steps: dict[str, np.ndarray]
    output_neurons: np.ndarray
    timing: dict[str, float] = field(default_factory=dict)
    stage_weighted: dict[str, np.ndarray] = field(default_factory=dict)
    stage_active: dict[str, np.ndarray] = field(default_factory=dict)
    overflow: int = 0


class Backend(ABC):
    name: str = ""

    def __init__(self, spec: nf.NetworkSpec) -> None:
        self.spec = spec

    @abstractmethod
    def run(
        self,
        images: np.ndarray,
        fanouts: dict[str, np.ndarray] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> RawRun:
        """images: (N, 3, S, S) uint8. fanouts: per-stage weights in (C, H, W) / (n,) layout."""


class TorchBackend(Backend):
    """The SLAYER model in exact fixed point (the reference)."""

    name = "torch"

    def __init__(self, spec: nf.NetworkSpec, batch_size: int = 16) -> None:
        super().__init__(spec)
        from netx.export import network_from_spec

        self.net = network_from_spec(spec)
        self.batch_size = batch_size

    def run(self, images, fanouts=None, progress=None) -> RawRun:
        import torch

        steps: dict[str, list[np.ndarray]] = {}
        weighted: dict[str, list[np.ndarray]] = {}
        active: dict[str, list[np.ndarray]] = {}
        neurons, overflow = [], 0
        w = None if fanouts is None else {k: torch.as_tensor(v) for k, v in fanouts.items()}
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(images), self.batch_size):
                batch = self.spec.frontend.apply(np.ascontiguousarray(images[i : i + self.batch_size]))
                x = self.net.encode(torch.from_numpy(batch))
                out = self.net(x, record=True, weights=w)
                for k, v in out.stage_steps.items():
                    steps.setdefault(k, []).append(v.numpy())
                for k, v in out.stage_weighted.items():
                    weighted.setdefault(k, []).append(v.numpy())
                for k, v in out.stage_active.items():
                    active.setdefault(k, []).append(v.numpy())
                neurons.append(out.output_neurons.numpy())
                overflow += out.overflow
                if progress is not None:
                    progress(min(len(images), i + self.batch_size))
        dt = time.perf_counter() - t0
        timing = {
            "run_s": dt,
            "ms_per_image": 1000 * dt / max(1, len(images)),
            "ms_per_step": 1000 * dt / max(1, len(images) * self.spec.time_steps),
        }
        cat = lambda d: {k: np.concatenate(v).astype(np.int64) for k, v in d.items()}  # noqa: E731
        return RawRun(cat(steps), np.concatenate(neurons).astype(np.int64), timing, cat(weighted), cat(active), overflow)


class SimBackend(Backend):
    """Lava CPU simulator, Loihi2SimCfg fixed point (bit-accurate) or floating point."""

    def __init__(self, spec: nf.NetworkSpec, float_mode: bool = False, fast: bool = True, workers: int = 1) -> None:
        super().__init__(spec)
        self.float_mode = float_mode
        self.fast = fast
        self.workers = max(1, workers)
        self.name = "sim-float" if float_mode else "sim"

    def run(self, images, fanouts=None, progress=None) -> RawRun:
        from hw_targets import sim

        whc = None if fanouts is None else {k: _to_lava_layout(v) for k, v in fanouts.items()}
        if self.workers > 1 and len(images) > 1:
            r = sim.run_sharded(self.spec, images, self.workers, fast=self.fast, float_mode=self.float_mode,
                                fanouts=whc, progress=progress)
        else:
            r = sim.run(self.spec, images, fast=self.fast, float_mode=self.float_mode, fanouts=whc, progress=progress)
        return RawRun(r.counts, r.output_neurons, r.timing, r.weighted, r.active)


def _to_lava_layout(a: np.ndarray) -> np.ndarray:
    from netx.build import chw_to_whc

    return chw_to_whc(a) if a.ndim == 3 else a


LOIHI2_MISSING = (
    "backend 'loihi2' needs Intel's lava-loihi extension (Loihi2HwCfg), which is not installed here; "
    "it is distributed to Intel Neuromorphic Research Community members "
    "(https://intel-ncl.atlassian.net/wiki/spaces/INRC). Use '--backend sim' for the bit-accurate "
    "simulator and 'lava-allnet map MODEL.net --target loihi2' for a fit report."
)


GRADED_LOIHI2 = ("backend 'loihi2': a graded model's neuron (netx.lava_procs.graded.GradedNeuron) has a CPU process "
                 "model only; on the chip it needs a Loihi 2 neuron microcode program, which lava-allnet does not have "
                 "yet. Use '--backend sim' (bit-accurate) and 'lava-allnet map MODEL.net --target loihi2'")


def check_backend(name: str, spec: nf.NetworkSpec | None = None) -> None:
    """Fail before any work when a backend is unknown or cannot run here (or cannot run ``spec``)."""
    if name not in BACKENDS:
        raise BackendUnavailable(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    if spec is not None and spec.graded and name in ("sim-float", "loihi2"):
        raise BackendUnavailable(f"backend 'sim-float': {nf.GRADED_NO_FLOAT}" if name == "sim-float" else GRADED_LOIHI2)
    if name == "loihi2" and not loihi2_available():
        raise BackendUnavailable(LOIHI2_MISSING)


class Loihi2Backend(Backend):
    """Loihi 2 hardware through Intel's lava-loihi (not publicly installable)."""

    name = "loihi2"

    def __init__(self, spec: nf.NetworkSpec) -> None:
        super().__init__(spec)
        check_backend(self.name, spec)

    def run(self, images, fanouts=None, progress=None) -> RawRun:  # pragma: no cover - needs hardware
        from hw_targets import sim
        from lava.magma.core.run_configs import Loihi2HwCfg

        whc = None if fanouts is None else {k: _to_lava_layout(v) for k, v in fanouts.items()}
        r = sim.run(self.spec, images, run_cfg=Loihi2HwCfg(), fanouts=whc, progress=progress)
        return RawRun(r.counts, r.output_neurons, r.timing, r.weighted, r.active)


def loihi2_available() -> bool:
    try:
        from lava.utils import loihi

        return bool(loihi.is_installed())
    except Exception:
        return False


def get_backend(name: str, spec: nf.NetworkSpec, workers: int = 1, fast: bool = True) -> Backend:
    check_backend(name, spec)
    if name == "torch":
        return TorchBackend(spec)
    if name == "sim":
        return SimBackend(spec, fast=fast, workers=workers)
    if name == "sim-float":
        return SimBackend(spec, float_mode=True, fast=fast, workers=workers)
    return Loihi2Backend(spec)
