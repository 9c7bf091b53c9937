"""NeurALLNet's squeeze-and-excitation gate as one Lava process, for the CPU simulator.

On Loihi the gate is 13 standard processes (``netx.build._build_se``): squeeze + FC1 (Dense) and its
bias (Dense from an always-firing LIF) into a GradedReluVec; FC2 twice and its biases into a second
GradedReluVec (the upper clamp); a broadcast Sparse; three relay hops (Sparse + GradedVec) that
delay the spikes; a ProdNeuron. On the simulator every process is an OS process that exchanges
messages with the runtime at every step, so the gate's 13 cost more than the convolutions (the
shipped network: 16.6 ms per step with its 3 gates, 5.8 without them).

:class:`SEGate` computes the same thing in one process: each synapse's one-step buffer, the same
weight clipping and truncation, weight exponents, int32 channels and neuron rules as Lava's
fixed-point models of those processes, so its three outputs (squeeze, excite, scale) carry the
same values at the same steps (``verify`` compares them against the torch reference, stage by
stage). The runtime selects it for the fast fixed-point simulator only; Loihi, the stock models
and the float simulator keep the decomposition.
"""
from __future__ import annotations

import numpy as np

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class SEGate(AbstractProcess):
    """Spikes (W, H, C) in; ``s_out`` the gated messages (W, H, C) three steps later; ``squeeze``
    (J,) and ``excite`` (2C,) the gate's graded messages one and two steps later (stage taps).

    weight1 (J, C), bias1 (J,), weight2 (C, J), bias2 (C,): integer mantissas; the exponents and
    ``gate_levels`` as in the model file (``netx.format.SESpec``).
    """

    def __init__(self, *, shape: tuple[int, int, int], weight1: np.ndarray, bias1: np.ndarray, weight2: np.ndarray,
                 bias2: np.ndarray, squeeze_exp: int, excite_exp: int, bias1_exp: int, bias2_exp: int,
                 gate_levels: int) -> None:
        super().__init__(shape=tuple(shape), weight1=np.asarray(weight1), bias1=np.asarray(bias1),
                         weight2=np.asarray(weight2), bias2=np.asarray(bias2), squeeze_exp=int(squeeze_exp),
                         excite_exp=int(excite_exp), bias1_exp=int(bias1_exp), bias2_exp=int(bias2_exp),
                         gate_levels=int(gate_levels))
        c = shape[-1]
        self.s_in = InPort(shape=tuple(shape))
        self.s_out = OutPort(shape=tuple(shape))
        self.squeeze = OutPort(shape=(len(np.asarray(bias1).reshape(-1)),))
        self.excite = OutPort(shape=(2 * c,))


def _lava_weights(w: np.ndarray) -> np.ndarray:
    """What Lava's fixed-point Dense and Sparse models do to their weights once (8-bit, by sign mode)."""
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    w = np.asarray(w, dtype=np.int32)
    mode = determine_sign_mode(w)
    return truncate_weights(clip_weights(w, mode, num_bits=8), mode, 8)


def _shift(x: np.ndarray, exp: int) -> np.ndarray:
    return np.left_shift(x, exp) if exp > 0 else np.right_shift(x, -exp)


def _graded(weights: np.ndarray, x: np.ndarray, exp: int) -> np.ndarray:
    """A fixed-point Dense/Sparse on graded input: the int dot in the weights' and input's type, shifted."""
    acc = weights.astype(np.int64) @ x.astype(np.int64)
    return _shift(acc.astype(np.result_type(weights.dtype, x.dtype)), exp)


@implements(proc=SEGate, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PySEGateModelFixed(PyLoihiProcessModel):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    squeeze: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)
    excite: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=24)

    def __init__(self, proc_params) -> None:
        super().__init__(proc_params)
        p = proc_params
        w, h, c = p["shape"]
        self._shape = (w, h, c)
        g = int(p["gate_levels"])
        # the decomposition's matrices, processed as Lava's models process them (see _build_se)
        self._w1 = _lava_weights(p["weight1"])  # its tiling over positions sums the per-channel counts
        self._b1 = _lava_weights(np.asarray(p["bias1"]).reshape(-1, 1))[:, 0].astype(np.int64)
        self._w2 = _lava_weights(np.vstack([p["weight2"], p["weight2"]]))
        b2 = np.asarray(p["bias2"]).reshape(-1, 1)
        self._b2 = _lava_weights(np.vstack([b2, b2 - (g >> int(p["bias2_exp"]))]))[:, 0].astype(np.int64)
        bc = _lava_weights(np.array([[2, -2]]))[0]  # the broadcast's ±2 (exponent -1)
        self._bc_plus, self._bc_minus = int(bc[0]), int(bc[1])
        self._relay = int(_lava_weights(np.array([[1]]))[0, 0])
        self._exps = (int(p["squeeze_exp"]), int(p["excite_exp"]), int(p["bias1_exp"]), int(p["bias2_exp"]))
        j = self._w1.shape[0]
        # the one-step buffers of the 8 synapses (Lava's a_buff), all zero before the first step
        self._fc1 = np.zeros(j, np.int32)
        self._bias1 = np.zeros(j, np.int32)
        self._fc2 = np.zeros(2 * c, np.int32)
        self._bias2 = np.zeros(2 * c, np.int32)
        self._bcast = np.zeros(c, np.int32)  # per channel; the same at every position
        self._relays = [np.zeros((w, h, c), np.int32) for _ in range(3)]

    def run_spk(self) -> None:
        sq_exp, ex_exp, b1_exp, b2_exp = self._exps
        s = self.s_in.recv()
        # the neurons: what their synapses sent this step (computed last step), int32 as Lava's ports
        relu1 = self._fc1 + self._bias1
        relu1 = relu1 * (relu1 > 0)
        relu2 = self._fc2 + self._bias2
        relu2 = relu2 * (relu2 > 0)
        gv1, gv2 = self._relays[0], self._relays[1]  # GradedVec, vth 0: the value itself
        prod = self._relays[2] * self._bcast  # ProdNeuron, exp 0, vth 0
        self.squeeze.send(relu1)
        self.excite.send(relu2)
        self.s_out.send(prod)
        # the synapses: this step's inputs, sent next step
        spikes = s != 0
        counts = spikes.sum(axis=(0, 1), dtype=np.int64)  # binary input: the tiled FC1 sums per channel
        self._fc1 = _shift(self._w1.astype(np.int64) @ counts, -sq_exp).astype(np.int32)
        self._bias1 = _shift(self._b1, b1_exp).astype(np.int32)  # the bias neuron fires every step
        self._fc2 = _graded(self._w2, relu1, -ex_exp).astype(np.int32)
        self._bias2 = _shift(self._b2, b2_exp).astype(np.int32)
        c = relu2.shape[0] // 2
        acc = self._bc_plus * relu2[:c].astype(np.int64) + self._bc_minus * relu2[c:].astype(np.int64)
        self._bcast = _shift(acc.astype(np.result_type(np.int32, relu2.dtype)), -1).astype(np.int32)
        # the three one-to-one hops (exponent 0): the first carries spikes, the others graded values
        self._relays = [(self._relay * spikes).astype(np.int32), (self._relay * gv1).astype(np.int32),
                        (self._relay * gv2).astype(np.int32)]
