"""NeurALLNet-G: a graded-message (Loihi 2) network, run in exact integer arithmetic.

A binary rate code pays about one synaptic operation per ANN MAC for every spike per neuron. A
graded neuron sends its activation once, as one integer message, and only when it reaches its
threshold: on a static image an inference is one pass of messages from the active neurons.

Every layer (conv or the dense read-out) in integer arithmetic, per image::

    acc = W · m_prev + B            (W: Loihi's 8-bit weights, even mantissas -256..254; m_prev: the
                                     previous layer's messages)
    q   = acc >> shift              (arithmetic shift: floor(acc / 2**shift))
    m   = q if q >= vth else 0      (hidden layers: a thresholded ReLU; vth >= 1)
    m   = q                         (the read-out: signed, the class scores)

The input layer's messages are the front end's pixels (0..255), sent once. The neuron is
stateless between images (``netx.lava_procs.graded``), so Lava streams one image per step through
the pipeline; :class:`GradedNetwork` is the reference both backends must equal value for value.
Accumulators must stay inside Loihi's signed 24 bits (``Output.overflow`` counts those that do not).

Computed in float64, where every integer here (below 2**53) is exact. The floor and threshold
pass gradients straight through, so Grad-CAM works on the deployed arithmetic.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from lava_allnet import fixed_point as fx
from lava_allnet.frontend import FrontEnd
from lava_allnet.model import Output

STATE_LIMIT = 1 << 23  # Loihi's signed 24-bit accumulators and messages: |acc| < 2**23


@dataclass
class GradedLayer:
    """One layer's integers. kind "conv" (weight (out, in, kH, kW)) or "dense" (weight (out, in))."""

    name: str
    kind: str
    weight: np.ndarray
    bias: np.ndarray  # (out,) added to the accumulator
    shift: int
    vth: int  # hidden layers: smallest message sent (>= 1); the read-out: 0 (it sends q as is)
    stride: int = 1
    padding: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("conv", "dense"):
            raise ValueError(f"{self.name}: kind must be conv or dense, not {self.kind!r}")
        w = np.asarray(self.weight)
        if w.size and (w.min() < fx.WEIGHT_MIN or w.max() > fx.WEIGHT_MAX or np.any(w % 2)):
            raise ValueError(f"{self.name}: weights must be even mantissas in [{fx.WEIGHT_MIN}, {fx.WEIGHT_MAX}]")
        if not 0 <= self.shift <= 23:
            raise ValueError(f"{self.name}: shift {self.shift} outside 0..23")
        if np.abs(self.bias).max(initial=0) >= STATE_LIMIT:
            raise ValueError(f"{self.name}: bias outside the 24-bit state")


def _floor_ste(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.floor(x) - x).detach()


class GradedNetwork(torch.nn.Module):
    """The deployed integer network (time_steps = 1: one pass per image). Interface of
    :class:`lava_allnet.model.Network`: ``encode``, ``forward(x, record, keep, weights)`` → Output."""

    time_steps = 1
    population = 1
    input_once = True

    def __init__(self, layers: list[GradedLayer], input_shape: tuple[int, int, int],
                 class_names: tuple[str, ...], frontend: FrontEnd | None = None) -> None:
        super().__init__()
        if not layers or layers[-1].kind != "dense" or layers[-1].vth != 0:
            raise ValueError("the last layer must be the dense read-out (vth 0)")
        if any(l.vth < 1 for l in layers[:-1]):
            raise ValueError("hidden layers need vth >= 1")
        if layers[-1].weight.shape[0] != len(class_names):
            raise ValueError(f"read-out has {layers[-1].weight.shape[0]} neurons for {len(class_names)} classes")
        self.layers = layers
        self.input_shape = tuple(input_shape)
        self.input_bits = 8
        self.class_names = tuple(class_names)
        self.frontend = frontend or FrontEnd()
        for i, l in enumerate(layers):
            self.register_buffer(f"w{i}", torch.from_numpy(np.asarray(l.weight, dtype=np.float64)))
            self.register_buffer(f"b{i}", torch.from_numpy(np.asarray(l.bias, dtype=np.float64)))

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def stage_names(self) -> list[str]:
        return ["input"] + [l.name for l in self.layers]

    def conv_names(self) -> list[str]:
        return [l.name for l in self.layers if l.kind == "conv"]

    def encode(self, images_uint8: torch.Tensor) -> torch.Tensor:
        if images_uint8.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
        return images_uint8.to(torch.float64)

    def accumulate(self, i: int, m: torch.Tensor) -> torch.Tensor:
        """Layer i's accumulator W · m + B (float64, exact)."""
        l, w, b = self.layers[i], getattr(self, f"w{i}"), getattr(self, f"b{i}")
        if l.kind == "conv":
            return F.conv2d(m, w, b, stride=l.stride, padding=l.padding)
        return F.linear(m.flatten(1), w, b)

    def forward(self, x: torch.Tensor, record: bool = False, keep: tuple[str, ...] = (),
                weights: dict[str, torch.Tensor] | None = None, range_penalty: bool = False) -> Output:
        """x: pixels (N, C, H, W), see :meth:`encode`. Messages are recorded as one step (T = 1)."""
        x = x.to(torch.float64)
        if keep and torch.is_grad_enabled():  # integer weights are buffers: the graph starts at the input
            x = x.detach().requires_grad_()
        steps, weighted, active, acts = {}, {}, {}, {}
        overflow = 0

        def note(name: str, m: torch.Tensor) -> torch.Tensor:
            if record:
                nz = (m.detach() != 0).flatten(1)
                steps[name] = nz.sum(1, keepdim=True)
                active[name] = nz.sum(1)
                if weights is not None and name in weights:
                    w = weights[name].to(torch.float64).reshape(-1)
                    weighted[name] = (nz.to(torch.float64) @ w).round().long().unsqueeze(1)
            if name in keep:  # time-major (N, T = 1, ...) like the spiking network's, and on the graph
                acts[name] = m.unsqueeze(1)
                return acts[name][:, 0]
            return m

        m = note("input", x)
        for i, l in enumerate(self.layers):
            acc = self.accumulate(i, m)
            if record:
                overflow += int((acc.detach().abs() >= STATE_LIMIT).sum())
            q = _floor_ste(acc / float(1 << l.shift))
            m = q if l.vth == 0 else torch.where(q.detach() >= l.vth, q, torch.zeros_like(q))
            m = note(l.name, m)
        neurons = m.detach().round().long() if record else None
        return Output(m.float(), steps, weighted, neurons, active, overflow, activations=acts)

    def num_parameters(self) -> int:
        return sum(int(np.asarray(l.weight).size + np.asarray(l.bias).size) for l in self.layers)
