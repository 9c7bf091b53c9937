"""Build the Lava process graph of a validated NetworkSpec.

Only standard ``lava.proc`` processes carry the network, so the graph has a
Loihi 2 mapping: Conv/Dense/Sparse connections, LIFReset (CUBA) neurons,
GradedReluVec / GradedVec / ProdNeuron for the SE gate, and an always-firing
LIF as the bias source. ``netx.lava_procs.streaming`` adds the image source and the counters.

Axes: Lava uses (W, H, C) ("XYZ"); the file and torch use (C, H, W).

SE gate (channel c, per step), verified exact against ``fixed_point.SEFixedPoint``::

    spikes ──Dense(W1 tiled over positions, exp -e1) + bias──▶ GradedReluVec(vth 0) = a1
           ──Dense([W2; W2], exp -e2) + bias [B2; B2-G]──▶ GradedReluVec(2C) = relu(z2), relu(z2-G)
           ──Sparse([+2; -2] per position, exp -1)──▶ ProdNeuron.a_in2 = clamp(z2, 0, G)
    spikes ──Sparse 1:1──▶ GradedVec ──Sparse 1:1──▶ GradedVec ──Sparse 1:1──▶ ProdNeuron.a_in1
    ProdNeuron(vth 0): spike * gate → next layer (graded)
Both paths into ProdNeuron take 3 hops, so the gate meets the spikes it was
computed from.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import sparse as sp

from lava.magma.core.process.ports.ports import OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.graded.process import GradedReluVec, GradedVec
from lava.proc.lif.process import LIF, LIFReset
from lava.proc.prodneuron.process import ProdNeuron
from lava.proc.sparse.process import Sparse

from lava_allnet import fixed_point as fx
from lava_allnet.errors import AllnetError
from netx import format as nf
from netx.lava_procs.graded import GradedNeuron
from netx.lava_procs.se_gate import SEGate
from netx.lava_procs.streaming import ImageSource, StageCounters, create_recordings, stage_counters_model


def conv_weight_to_lava(w: np.ndarray) -> np.ndarray:
    """(out, in, kH, kW) cross-correlation → Lava's (out, kW, kH, in) kernel (as NetX does)."""
    return np.ascontiguousarray(w[:, :, ::-1, ::-1].transpose(0, 3, 2, 1)).astype(np.int32)


def chw_to_whc(x: np.ndarray) -> np.ndarray:
    """(..., C, H, W) → (..., W, H, C)."""
    return np.ascontiguousarray(np.swapaxes(x, -1, -3))


@dataclass
class Stage:
    """A point of the graph whose messages are counted."""

    name: str
    port: OutPort
    shape: tuple[int, ...]  # Lava shape (W, H, C) or (n,)
    depth: int  # hops from the image source
    kind: str  # "spike" (binary LIF), "graded"
    index: int = -1  # its port / row in the StageCounters


@dataclass
class LavaGraph:
    source: ImageSource
    stages: list[Stage]
    processes: list[AbstractProcess] = field(default_factory=list)
    depth: int = 0  # depth of the output stage
    counters: StageCounters | None = None

    def model_map(self) -> dict:
        """Process-instance → model entries the run config needs (the counters' model)."""
        if self.counters is None:
            return {}
        return {self.counters: stage_counters_model(self.counters.num_stages)}

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


class _Builder:
    def __init__(self, spec: nf.NetworkSpec, time_steps: int, reset: bool, float_mode: bool) -> None:
        self.spec = spec
        self.T = time_steps
        self.reset = reset
        self.float_mode = float_mode
        self.procs: list[AbstractProcess] = []
        self.stages: list[Stage] = []
        self._bias: LIF | None = None

    def add(self, p: AbstractProcess) -> AbstractProcess:
        self.procs.append(p)
        return p

    # ---- neurons
    def lif(self, shape: tuple[int, ...], n: nf.NeuronSpec, depth: int, bias: np.ndarray | None = None) -> AbstractProcess:
        # per-channel bias (last axis of a (W, H, C) or (n,) shape), broadcast to every neuron
        bias_full = np.zeros(shape) if bias is None else np.broadcast_to(np.asarray(bias), shape).copy()
        if self.float_mode:
            # Float simulator: the same dynamics in real units, no integer rounding.
            params = dict(
                du=n.i_decay / 4096, dv=n.v_decay / 4096, vth=n.threshold,
                bias_mant=bias_full.astype(np.float64) / (1 << fx.BIAS_EXP), bias_exp=0.0,
            )
        else:
            params = fx.lava_lif_params(n.i_decay, n.v_decay, n.vth_mant)
            params["bias_mant"] = bias_full.astype(np.int32)
        if self.reset:
            # LIFReset zeroes u, v when time_step % T == offset: the first step of this stage's window.
            return self.add(LIFReset(shape=shape, reset_interval=self.T, reset_offset=(1 + depth) % self.T, **params))
        return self.add(LIF(shape=shape, **params))

    def neuron(self, shape: tuple[int, ...], n: nf.NeuronSpec | nf.GradedNeuronSpec, depth: int,
               bias: np.ndarray | None) -> tuple[AbstractProcess, str]:
        """The layer's neurons and its stage kind: CUBA (``lif``) or a graded network's neuron."""
        if isinstance(n, nf.GradedNeuronSpec):
            b = np.zeros(shape[-1], np.int64) if bias is None else bias
            return self.add(GradedNeuron(shape=shape, bias=b, shift=n.shift, vth=n.vth, relu=n.relu)), "graded"
        return self.lif(shape, n, depth, bias), "spike"

    def bias_source(self) -> LIF:
        """An always-firing neuron: v = 1 > vth = 0 every step (first spike at step 1)."""
        if self._bias is None:
            self._bias = self.add(LIF(shape=(1,), vth=0, bias_mant=1, bias_exp=0, du=0, dv=0))
        return self._bias

    def w(self, mantissas: np.ndarray, exp: int) -> np.ndarray:
        """Weights for Dense/Sparse: integers in fixed point, real values (with the shift) in float."""
        m = np.asarray(mantissas)
        return m.astype(np.float64) * 2.0**exp if self.float_mode else m.astype(np.int32)

    def dense(self, weights: np.ndarray, exp: int, message_bits: int) -> Dense:
        if self.float_mode:
            return self.add(Dense(weights=self.w(weights, exp), num_message_bits=message_bits))
        return self.add(Dense(weights=self.w(weights, 0), weight_exp=exp, num_message_bits=message_bits))

    def sparse(self, weights: sp.csr_matrix, exp: int, message_bits: int) -> Sparse:
        if self.float_mode:
            return self.add(Sparse(weights=(weights * 2.0**exp).tocsr(), num_message_bits=message_bits))
        return self.add(Sparse(weights=weights.astype(np.int32), weight_exp=exp, num_message_bits=message_bits))

    def conv(self, weight: np.ndarray, input_shape, stride, padding, dilation, groups, message_bits) -> Conv:
        w = conv_weight_to_lava(weight)
        if self.float_mode:
            w = w.astype(np.float64) / fx.WEIGHT_SCALE
        return self.add(
            Conv(weight=w, input_shape=input_shape, stride=stride, padding=padding, dilation=dilation,
                 groups=groups, num_message_bits=message_bits)
        )

    def identity(self, n: int, message_bits: int) -> Sparse:
        """A one-to-one connection (a relay hop). Not a depthwise Conv: Lava stores
        Conv's ``groups`` as int8, so 128 or more channels wrap around."""
        return self.sparse(sp.identity(n, dtype=np.int32, format="csr"), 0, message_bits)

    def stage(self, name: str, port: OutPort, shape, depth: int, kind: str) -> None:
        self.stages.append(Stage(name, port, tuple(shape), depth, kind))


def build(
    spec: nf.NetworkSpec,
    frames_path: str,
    num_samples: int,
    reset: bool = True,
    float_mode: bool = False,
    counters: bool = True,
    fanouts: dict[str, np.ndarray] | None = None,
    record_dir: str | None = None,
    fused_se: bool = False,
) -> LavaGraph:
    """The network as Lava processes, fed from ``frames_path`` (N, W, H, C messages).

    reset: LIFReset neurons (needed to stream several samples through one network).
    fanouts: optional per-stage weights for the counters (synaptic-op counting).
    record_dir: the counters also write every stage's message values there (``stage{i}.npy``, one
        row per sample and window step, Lava's (W, H, C) order flattened; see ``Stage.index``).
    fused_se: each SE gate as one process (``netx.lava_procs.se_gate``, fixed-point simulator only)
        instead of its 13 Loihi processes; the same messages at the same steps.
    """
    if fused_se and float_mode:
        raise ValueError("fused_se: the fused SE gate is fixed point")
    if spec.graded and float_mode:
        raise AllnetError(nf.GRADED_NO_FLOAT)
    b = _Builder(spec, spec.time_steps, reset, float_mode)
    c, h, w = spec.input.shape
    src = b.add(ImageSource(path=str(frames_path), shape=(w, h, c), num_samples=num_samples, steps=spec.time_steps,
                            once=spec.input.send_once))
    out: OutPort = src.s_out
    shape_whc: tuple[int, ...] = (w, h, c)
    b.stage("input", out, shape_whc, 0, "graded")
    depth = 0
    flatten_next = False
    for layer in spec.layers[1:]:
        if isinstance(layer, nf.ConvSpec):
            conv = b.conv(
                layer.weight, shape_whc, layer.stride[::-1], layer.padding[::-1], layer.dilation[::-1],
                layer.groups, layer.input_message_bits,
            )
            out.connect(conv.s_in)
            depth += 1
            oc, oh, ow = layer.shape
            shape_whc = (ow, oh, oc)
            if tuple(conv.a_out.shape) != shape_whc:
                raise ValueError(f"{layer.name}: Lava conv output {conv.a_out.shape} != {shape_whc}")
            neuron, kind = b.neuron(shape_whc, layer.neuron, depth, layer.bias)
            conv.a_out.connect(neuron.a_in)
            out = neuron.s_out
            b.stage(layer.name, out, shape_whc, depth, kind)
        elif isinstance(layer, nf.SESpec):
            if fused_se:
                gate = b.add(SEGate(shape=shape_whc, weight1=layer.weight1, bias1=layer.bias1, weight2=layer.weight2,
                                    bias2=layer.bias2, squeeze_exp=layer.squeeze_exp, excite_exp=layer.excite_exp,
                                    bias1_exp=layer.bias1_exp, bias2_exp=layer.bias2_exp,
                                    gate_levels=layer.gate_levels))
                out.connect(gate.s_in)
                b.stage(f"{layer.name}.squeeze", gate.squeeze, (layer.hidden,), depth + 1, "graded")
                b.stage(f"{layer.name}.excite", gate.excite, (2 * shape_whc[-1],), depth + 2, "graded")
                b.stage(f"{layer.name}.scale", gate.s_out, shape_whc, depth + 3, "graded")
                out, depth = gate.s_out, depth + 3
            else:
                out, depth = _build_se(b, layer, out, shape_whc, depth)
        elif isinstance(layer, nf.FlattenSpec):
            flatten_next = True
        elif isinstance(layer, nf.DenseSpec):
            dense = b.dense(layer.weight, 0, layer.input_message_bits)
            if flatten_next and len(shape_whc) == 3:
                # (W, H, C) → (C, H, W) C-order, like torch's flatten
                out.transpose([2, 1, 0]).flatten().connect(dense.s_in)
            else:
                out.connect(dense.s_in)
            flatten_next = False
            depth += 1
            shape_whc = tuple(layer.shape)
            neuron, kind = b.neuron(shape_whc, layer.neuron, depth, layer.bias)
            dense.a_out.connect(neuron.a_in)
            out = neuron.s_out
            b.stage(layer.name, out, shape_whc, depth, kind)
    graph = LavaGraph(src, b.stages, b.procs, depth)
    if counters:
        fanouts = fanouts or {}
        if record_dir is not None:
            create_recordings(record_dir, [st.shape for st in b.stages], num_samples, spec.time_steps)
        graph.counters = StageCounters(
            shapes=[st.shape for st in b.stages], depths=[st.depth for st in b.stages], steps=spec.time_steps,
            num_samples=num_samples, weights=[fanouts.get(st.name) for st in b.stages], per_neuron=-1,
            record_dir=record_dir,
        )
        for i, st in enumerate(b.stages):
            st.index = i
            st.port.connect(getattr(graph.counters, f"in{i}"))
        graph.processes.append(graph.counters)
    return graph


def _build_se(b: _Builder, layer: nf.SESpec, spikes: OutPort, shape_whc, depth: int) -> tuple[OutPort, int]:
    W, H, C = shape_whc
    J, G = layer.hidden, layer.gate_levels
    n_pos = W * H
    bias = b.bias_source()

    # squeeze + FC1 in one Dense: input index (x*H + y)*C + c carries W1[:, c]
    fc1 = b.dense(np.tile(layer.weight1, (1, n_pos)), -layer.squeeze_exp, 0)
    spikes.flatten().connect(fc1.s_in)
    bias1 = b.dense(layer.bias1.reshape(J, 1), layer.bias1_exp, 0)
    bias.s_out.connect(bias1.s_in)
    relu1 = b.add(GradedReluVec(shape=(J,), vth=0))
    fc1.a_out.connect(relu1.a_in)
    bias1.a_out.connect(relu1.a_in)

    # FC2 twice: rows c and C + c; the second row's bias is lowered by G for the upper clamp
    fc2 = b.dense(np.vstack([layer.weight2, layer.weight2]), -layer.excite_exp, 24)
    relu1.s_out.connect(fc2.s_in)
    b2 = layer.bias2.reshape(C, 1)
    bias2 = b.dense(np.vstack([b2, b2 - (G >> layer.bias2_exp)]), layer.bias2_exp, 0)
    bias.s_out.connect(bias2.s_in)
    relu2 = b.add(GradedReluVec(shape=(2 * C,), vth=0))
    fc2.a_out.connect(relu2.a_in)
    bias2.a_out.connect(relu2.a_in)

    # broadcast relu(z2) - relu(z2 - G) = clamp(z2, 0, G) to every position; ±2 with exp -1
    # because a mixed-sign synapse drops the lowest weight bit
    rows = np.arange(n_pos * C)
    cols = rows % C
    bc = sp.csr_matrix(
        (np.concatenate([np.full(rows.size, 2), np.full(rows.size, -2)]),
         (np.concatenate([rows, rows]), np.concatenate([cols, cols + C]))),
        shape=(n_pos * C, 2 * C),
    )
    bcast = b.sparse(bc, -1, 24)
    relu2.s_out.connect(bcast.s_in)

    prod = b.add(ProdNeuron(shape=shape_whc, vth=0, exp=0))
    bcast.a_out.reshape(shape_whc).connect(prod.a_in2)

    # delay the spikes by the same 3 hops (one-to-one Sparse + GradedVec relays)
    port, bits = spikes.flatten(), 0
    for hop in range(3):
        relay = b.identity(n_pos * C, bits)
        port.connect(relay.s_in)
        if hop == 2:
            relay.a_out.reshape(shape_whc).connect(prod.a_in1)
        else:
            gv = b.add(GradedVec(shape=(n_pos * C,), vth=0))
            relay.a_out.connect(gv.a_in)
            port, bits = gv.s_out, 24

    b.stage(f"{layer.name}.squeeze", relu1.s_out, (J,), depth + 1, "graded")
    b.stage(f"{layer.name}.excite", relu2.s_out, (2 * C,), depth + 2, "graded")
    b.stage(f"{layer.name}.scale", prod.s_out, shape_whc, depth + 3, "graded")
    return prod.s_out, depth + 3
