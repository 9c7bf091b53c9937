"""In-graph input and probes: a streaming image source and per-stage spike counters.

Both move data in bulk: the source memory-maps the encoded images from a
.npy file (no Var.set per element), and each counter accumulates per-sample,
per-step totals in one small Var read once after the run.

Windows: a stage at hop depth d handles sample n during steps
[n*T + 1 + d, (n+1)*T + d] (Lava steps count from 1); the counter connected to
it directly (no hop) counts exactly those steps.
"""
from __future__ import annotations

import numpy as np

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class ImageSource(AbstractProcess):
    """Sends sample n's encoded image (graded messages) at every step of its window, or with
    ``once`` at its first step only (zeros after: the first layer's current holds it).

    path: a .npy file of shape (num_samples, W, H, C), integer messages.
    """

    def __init__(self, *, path: str, shape: tuple[int, int, int], num_samples: int, steps: int,
                 once: bool = False) -> None:
        super().__init__(path=path, shape=shape, num_samples=num_samples, steps=steps, once=once)
        self.s_out = OutPort(shape=shape)


@implements(proc=ImageSource, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt", "floating_pt")
class PyImageSourceModel(PyLoihiProcessModel):
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._frames = np.load(proc_params["path"], mmap_mode="r")
        self._steps = int(proc_params["steps"])
        self._n = int(proc_params["num_samples"])
        self._once = bool(proc_params.get("once", False))
        self._zeros = np.zeros(proc_params["shape"], dtype=np.int32)
        self._cached = (-1, self._zeros)

    def run_spk(self) -> None:
        n, j = divmod(self.time_step - 1, self._steps)
        if n >= self._n or (self._once and j > 0):
            self.s_out.send(self._zeros)
            return
        if self._cached[0] != n:
            self._cached = (n, np.ascontiguousarray(self._frames[n], dtype=np.int32))
        self.s_out.send(self._cached[1])


class StageCounters(AbstractProcess):
    """Counts non-zero messages of every probed stage, per sample and window step.

    One process for all stages (``in0``, ``in1``, ... one InPort per stage):
    each Lava process costs ~0.2 ms per step on the CPU, so a counter per
    layer would cost more than the layers. For stage i:
      counts[i, n, j]   messages in step j of sample n's window
      weighted[i, n, j] the same messages weighted by ``weights[i]`` (fan-out → synaptic ops)
      active[i, n]      neurons that sent at least one message in sample n's window
    and neurons[n, k] sums per neuron of stage ``per_neuron`` (the output layer): spike counts, or a
    graded read-out's message values.

    record_dir: also write every message value of every stage, per sample and window step, to
    ``record_dir/stage{i}.npy`` (int32, shape (num_samples, steps, neurons), created beforehand,
    e.g. by :func:`create_recordings`): memory-mapped, so the run holds no more than one step.
    """

    def __init__(
        self,
        *,
        shapes: list[tuple[int, ...]],
        depths: list[int],
        steps: int,
        num_samples: int,
        weights: list[np.ndarray | None] | None = None,
        per_neuron: int = -1,
        record_dir: str | None = None,
    ) -> None:
        k = len(shapes)
        weights = weights or [None] * k
        per_neuron = per_neuron % k
        super().__init__(
            shapes=[tuple(s) for s in shapes], depths=list(depths), steps=steps, num_samples=num_samples,
            weights=[None if w is None else np.asarray(w, dtype=np.int64).reshape(s) for w, s in zip(weights, shapes)],
            per_neuron=per_neuron, record_dir=record_dir,
        )
        for i, shape in enumerate(shapes):
            setattr(self, f"in{i}", InPort(shape=tuple(shape)))
        self.counts = Var(shape=(k, num_samples, steps), init=0)
        self.weighted = Var(shape=(k, num_samples, steps), init=0)
        self.active = Var(shape=(k, num_samples), init=0)
        self.neurons = Var(shape=(num_samples, int(np.prod(shapes[per_neuron]))), init=0)

    @property
    def num_stages(self) -> int:
        return len(self.proc_params["shapes"])


class _StageCountersModelBase(PyLoihiProcessModel):
    counts: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=64)
    weighted: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=64)
    active: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=64)
    neurons: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=64)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._depths = list(proc_params["depths"])
        self._steps = int(proc_params["steps"])
        self._n = int(proc_params["num_samples"])
        self._weights = proc_params["weights"]
        self._per_neuron = int(proc_params["per_neuron"])
        self._ports: list = []
        self._seen = [np.zeros(tuple(s), dtype=bool) for s in proc_params["shapes"]]
        rec = proc_params["record_dir"]
        self._rec = None if rec is None else [np.load(f"{rec}/stage{i}.npy", mmap_mode="r+")
                                              for i in range(len(self._depths))]

    def run_spk(self) -> None:
        if not self._ports:  # the builder attaches the real ports after __init__
            self._ports = [getattr(self, f"in{i}") for i in range(len(self._depths))]
        for i, port in enumerate(self._ports):
            msg = port.recv()  # every port must be read every step
            t = self.time_step - 1 - self._depths[i]
            if t < 0:
                continue
            n, j = divmod(t, self._steps)
            if n >= self._n:
                continue
            if self._rec is not None:
                self._rec[i][n, j] = msg.reshape(-1)
            nz = msg != 0
            self.counts[i, n, j] += int(np.count_nonzero(nz))
            seen = self._seen[i]
            if j == 0:
                seen[...] = nz
            else:
                seen |= nz
            if j == self._steps - 1:
                self.active[i, n] = int(np.count_nonzero(seen))
            w = self._weights[i]
            if w is not None:
                self.weighted[i, n, j] += int(w[nz].sum())
            if i == self._per_neuron:  # spike counts, or a graded read-out's message values
                self.neurons[n] += msg.reshape(-1).astype(np.int64)


def create_recordings(record_dir: str, shapes: list[tuple[int, ...]], num_samples: int, steps: int) -> list[str]:
    """The zero-filled files a recording StageCounters writes into: ``stage{i}.npy`` per stage."""
    paths = []
    for i, shape in enumerate(shapes):
        path = f"{record_dir}/stage{i}.npy"
        np.lib.format.open_memmap(path, mode="w+", dtype=np.int32,
                                  shape=(num_samples, steps, int(np.prod(shape)))).flush()
        paths.append(path)
    return paths


def stage_counters_model(num_stages: int) -> type:
    """The process model class of a StageCounters with ``num_stages`` ports.

    Lava reads port types from class attributes, so the class is made per
    port count; pass it via ``exception_proc_model_map`` (see netx.build).
    """
    cached = _MODELS.get(num_stages)
    if cached is not None:
        return cached
    attrs = {f"in{i}": LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24) for i in range(num_stages)}
    attrs["__module__"] = __name__
    cls = type(f"PyStageCountersModel{num_stages}", (_StageCountersModelBase,), attrs)
    cls = implements(proc=StageCounters, protocol=LoihiProtocol)(cls)
    cls = requires(CPU)(cls)
    cls = tag("fixed_pt", "floating_pt")(cls)
    _MODELS[num_stages] = cls
    return cls


_MODELS: dict[int, type] = {}
