"""Run a network on the Lava CPU simulator: one compiled graph streams all images."""
from __future__ import annotations

import contextlib
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg

from lava_allnet import fixed_point as fx
from lava_allnet.errors import AllnetError, SimulationError
from hw_targets import lava_runtime
from netx import build as nb
from netx import format as nf


@dataclass
class SimRun:
    """Per-sample results of one simulator run."""

    counts: dict[str, np.ndarray]  # stage → (N, T) messages per window step
    weighted: dict[str, np.ndarray]  # stage → (N, T) weighted by the counter weights
    output_neurons: np.ndarray  # (N, n_out) output spikes per neuron
    active: dict[str, np.ndarray] = field(default_factory=dict)  # stage → (N,) neurons active in the window
    timing: dict[str, float] = field(default_factory=dict)
    # with record_dir: stage → (file, Lava shape): (N, T, neurons) int32 message values, Lava (W, H, C) order
    recorded: dict[str, tuple[str, tuple[int, ...]]] = field(default_factory=dict)


def run_config(float_mode: bool = False, fast: bool = True, extra: dict | None = None) -> Loihi2SimCfg:
    exceptions = dict(extra or {})
    if float_mode:  # the fast models are fixed point; the float map has its own fast conv
        from hw_targets.lava_models import float_exception_map

        exceptions.update(float_exception_map())
    elif fast:
        from hw_targets.lava_models import fast_exception_map

        exceptions.update(fast_exception_map())
    return Loihi2SimCfg(
        select_tag="floating_pt" if float_mode else "fixed_pt",
        exception_proc_model_map=exceptions or None,
    )


def run(
    spec: nf.NetworkSpec,
    images_uint8: np.ndarray,
    *,
    fast: bool = True,
    float_mode: bool = False,
    fanouts: dict[str, np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_samples: int = 8,
    run_cfg=None,
    record_dir: str | None = None,
) -> SimRun:
    """images_uint8: (N, C, H, W) RGB. Streams them through one compiled network.

    record_dir: also write every stage's message values there, one file per stage (``recorded``).

    The runtime is always stopped (errors and Ctrl-C included), so no Lava
    child process or shared-memory segment outlives the call.
    """
    n = int(images_uint8.shape[0])
    T = spec.time_steps
    msgs = fx.encode_pixels(spec.frontend.apply(images_uint8), spec.input.message_bits)
    frames = nb.chw_to_whc(msgs).astype(np.uint8)
    with tempfile.TemporaryDirectory(prefix="lava-allnet-") as tmp:
        path = Path(tmp) / "frames.npy"
        np.save(path, frames)
        # our fast models include the fused SE gate; a given run config (hardware) gets Lava's standard processes
        graph = nb.build(spec, str(path), n, reset=True, float_mode=float_mode, fanouts=fanouts, record_dir=record_dir,
                         fused_se=fast and not float_mode and run_cfg is None)
        if run_cfg is None:
            cfg = run_config(float_mode=float_mode, fast=fast, extra=graph.model_map())
        else:
            cfg = run_cfg
            cfg.exception_proc_model_map = {**graph.model_map(), **(cfg.exception_proc_model_map or {})}
        total = n * T + graph.depth
        timing: dict[str, float] = {}
        t0 = time.perf_counter()
        with _as_simulation_error(), lava_runtime.running(graph.source, cfg):
            timing["compile_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            done_steps = 0
            chunk = max(1, chunk_samples) * T
            while done_steps < total:
                # the first chunk also fills the pipeline (depth steps)
                steps = min(total - done_steps, chunk + (graph.depth if done_steps == 0 else 0))
                graph.source.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
                done_steps += steps
                if progress is not None:
                    progress(min(n, max(0, (done_steps - graph.depth) // T)))
            timing["run_s"] = time.perf_counter() - t1
            timing["steps"] = float(total)
            t2 = time.perf_counter()
            # one bulk read per Var (Var.get costs per element, never loop over it)
            all_counts = np.asarray(graph.counters.counts.get(), dtype=np.int64)
            all_weighted = np.asarray(graph.counters.weighted.get(), dtype=np.int64) if fanouts else None
            out = np.asarray(graph.counters.neurons.get(), dtype=np.int64)
            all_active = np.asarray(graph.counters.active.get(), dtype=np.int64)
            timing["readout_s"] = time.perf_counter() - t2
    counts = {st.name: all_counts[st.index] for st in graph.stages}
    weighted = {st.name: all_weighted[st.index] for st in graph.stages if fanouts and st.name in fanouts}
    active = {st.name: all_active[st.index] for st in graph.stages}
    timing["ms_per_step"] = 1000 * timing.get("run_s", 0.0) / max(1.0, timing.get("steps", 1.0))
    timing["ms_per_image"] = 1000 * timing.get("run_s", 0.0) / max(1, n)
    recorded = ({st.name: (f"{record_dir}/stage{st.index}.npy", st.shape) for st in graph.stages}
                if record_dir is not None else {})
    return SimRun(counts, weighted, out, active, timing, recorded)


@contextlib.contextmanager
def _as_simulation_error():
    """Lava's own failures (a process model raising in a child) become one clear error."""
    try:
        yield
    except AllnetError:
        raise
    except Exception as exc:
        detail = "; ".join(getattr(exc, "__notes__", []))
        raise SimulationError(
            f"the Lava simulator failed ({type(exc).__name__}: {exc}{'; ' + detail if detail else ''}); "
            "the runtime was stopped"
        ) from exc


def _shard_worker(args) -> SimRun:
    shard, spec, images, fast, float_mode, fanouts, queue = args

    def report(done: int) -> None:
        queue.put((shard, done))

    return run(spec, images, fast=fast, float_mode=float_mode, fanouts=fanouts, progress=report)


def run_sharded(
    spec: nf.NetworkSpec,
    images_uint8: np.ndarray,
    workers: int,
    *,
    fast: bool = True,
    float_mode: bool = False,
    fanouts: dict[str, np.ndarray] | None = None,
    progress: Callable[[int], None] | None = None,
) -> SimRun:
    """Shard the images over ``workers`` processes, each with its own compiled network."""
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import ProcessPoolExecutor

    n = len(images_uint8)
    workers = max(1, min(workers, n))
    bounds = np.linspace(0, n, workers + 1).astype(int)
    # fork, as Lava itself does for its actors: a spawned interpreter cannot import Lava
    # (it calls mp.set_start_method('fork') at import, which fails once a context is set)
    ctx = mp.get_context("fork")
    t0 = time.perf_counter()
    with ctx.Manager() as manager:
        q = manager.Queue()
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            futures = [
                pool.submit(_shard_worker, (i, spec, images_uint8[a:b], fast, float_mode, fanouts, q))
                for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))
            ]
            done = [0] * workers  # cumulative images per shard
            while not all(f.done() for f in futures):
                try:
                    shard, k = q.get(timeout=0.2)
                    done[shard] = k
                except queue_mod.Empty:
                    continue
                if progress is not None:
                    progress(sum(done))
            parts = [f.result() for f in futures]
    counts = {k: np.concatenate([p.counts[k] for p in parts]) for k in parts[0].counts}
    weighted = {k: np.concatenate([p.weighted[k] for p in parts]) for k in parts[0].weighted}
    out = np.concatenate([p.output_neurons for p in parts])
    active = {k: np.concatenate([p.active[k] for p in parts]) for k in parts[0].active}
    wall = time.perf_counter() - t0
    timing = {
        "workers": float(workers),
        "compile_s": max(p.timing["compile_s"] for p in parts),
        "ms_per_step": float(np.mean([p.timing["ms_per_step"] for p in parts])),
        "run_s": wall,
        "ms_per_image": 1000 * wall / max(1, n),
    }
    if progress is not None:
        progress(n)
    return SimRun(counts, weighted, out, active, timing)
