"""The graded neuron of NeurALLNet-G (``lava_allnet.graded``) as a Lava process.

Stateless from step to step, so one image per step streams through the pipeline::

    v = a_in + bias;  q = v >> shift;  s_out = q if q >= vth (relu) else 0;  s_out = q (read-out)

This is Lava's ``GradedReluVec`` (a graded ReLU that keeps no state) with a bias and a right shift,
the arithmetic of a Loihi 2 graded-spike neuron program; Lava's standard library has no process
with both, so this one carries them. Messages are 24-bit signed integers, like every graded message.
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


class GradedNeuron(AbstractProcess):
    """shape: Lava's (W, H, C) or (n,); bias: per neuron (broadcast from the last axis);
    shift >= 0; relu: send q >= vth only (vth >= 1), else send q as is (the read-out)."""

    def __init__(self, *, shape: tuple[int, ...], bias: np.ndarray, shift: int, vth: int, relu: bool) -> None:
        shape = tuple(int(s) for s in shape)
        if shift < 0 or (relu and vth < 1):
            raise ValueError(f"graded neuron: shift {shift} must be >= 0 and vth {vth} >= 1 with relu")
        super().__init__(shape=shape, shift=int(shift), vth=int(vth), relu=bool(relu))
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.bias = Var(shape=shape, init=np.broadcast_to(np.asarray(bias, dtype=np.int32), shape).copy())


@implements(proc=GradedNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyGradedNeuronModelFixed(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    bias: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        self._shift = int(proc_params["shift"])
        self._vth = int(proc_params["vth"])
        self._relu = bool(proc_params["relu"])

    def run_spk(self) -> None:
        v = self.a_in.recv().astype(np.int64) + self.bias
        q = np.right_shift(v, self._shift)
        if self._relu:
            q = np.where(q >= self._vth, q, 0)
        self.s_out.send(q.astype(np.int32))
