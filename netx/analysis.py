"""Static facts about a NetworkSpec: per-layer sizes, synapses, fan-in / fan-out, ANN MACs.

Counts follow the Lava graph that ``netx.build`` makes, so "synapses" are the
connections a Loihi mapping has to store, and a stage's fan-out is how many
synaptic operations one of its messages triggers.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from netx import format as nf


@dataclass
class LayerStats:
    index: int
    name: str
    type: str
    shape: tuple[int, ...]  # output (C, H, W) or (n,)
    parameters: int  # trainable numbers (weights + biases)
    weight_bytes: int  # at 8-bit mantissas
    neurons: int  # compartments the layer adds (SE: graded units, relays, product)
    synapses: int  # stored connections (conv: unique weights are shared, counted per connection)
    unique_weights: int  # distinct synaptic weights to store (conv kernels are shared)
    max_fan_in: int
    ann_macs: int  # multiply-accumulates of the same layer in a conventional ANN (one pass)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


def conv_fanout_map(in_hw: tuple[int, int], spec: nf.ConvSpec) -> np.ndarray:
    """Output positions that read each input position (H, W)."""
    (H, W), (kh, kw) = in_hw, spec.kernel_size
    oh, ow = spec.shape[1], spec.shape[2]
    counts = np.zeros((H, W), dtype=np.int64)
    oy = np.arange(oh) * spec.stride[0] - spec.padding[0]
    ox = np.arange(ow) * spec.stride[1] - spec.padding[1]
    for ky in range(kh):
        iy = oy + ky * spec.dilation[0]
        vy = iy[(iy >= 0) & (iy < H)]
        for kx in range(kw):
            ix = ox + kx * spec.dilation[1]
            vx = ix[(ix >= 0) & (ix < W)]
            np.add.at(counts, (vy[:, None], vx[None, :]), 1)
    return counts


def _consumer_fanout(shape: tuple[int, ...], nxt: nf.LayerSpec | None) -> np.ndarray:
    """Synapses each neuron of ``shape`` drives in the next conv / dense layer."""
    if nxt is None:
        return np.zeros(shape, dtype=np.int64)
    if isinstance(nxt, nf.ConvSpec):
        c = shape[0]
        per_pos = conv_fanout_map(shape[1:], nxt) * (nxt.out_channels // nxt.groups)
        return np.broadcast_to(per_pos, (c, *shape[1:])).copy()
    if isinstance(nxt, nf.DenseSpec):
        return np.full(shape, nxt.shape[0], dtype=np.int64)
    raise TypeError(type(nxt).__name__)


def stage_fanouts(spec: nf.NetworkSpec) -> dict[str, np.ndarray]:
    """Per stage, the synaptic operations one message of each neuron triggers ((C,H,W) or (n,))."""
    layers = spec.layers
    out: dict[str, np.ndarray] = {}

    def next_consumer(i: int) -> nf.LayerSpec | None:
        for l in layers[i + 1:]:
            if isinstance(l, (nf.ConvSpec, nf.DenseSpec)):
                return l
        return None

    out["input"] = _consumer_fanout(spec.input.shape, next_consumer(0))
    for i, layer in enumerate(layers):
        if isinstance(layer, nf.ConvSpec):
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(nxt, nf.SESpec):
                # each spike feeds the squeeze/FC1 Dense (hidden synapses) and the first relay
                # (see `se_relay_neurons`: the relays' own messages are counted separately)
                out[layer.name] = np.full(layer.shape, nxt.hidden + 1, dtype=np.int64)
            else:
                out[layer.name] = _consumer_fanout(layer.shape, next_consumer(i))
        elif isinstance(layer, nf.SESpec):
            c, h, w = layer.shape
            out[f"{layer.name}.squeeze"] = np.full((layer.hidden,), 2 * c, dtype=np.int64)
            out[f"{layer.name}.excite"] = np.full((2 * c,), h * w, dtype=np.int64)
            out[f"{layer.name}.scale"] = _consumer_fanout(layer.shape, next_consumer(i))
        elif isinstance(layer, nf.DenseSpec):
            out[layer.name] = _consumer_fanout(layer.shape, next_consumer(i))
    return out


def layer_stats(spec: nf.NetworkSpec) -> list[LayerStats]:
    rows: list[LayerStats] = []
    shape: tuple[int, ...] = spec.input.shape
    for i, layer in enumerate(spec.layers):
        if isinstance(layer, nf.InputSpec):
            rows.append(LayerStats(i, "input", "input", layer.shape, 0, 0, 0, 0, 0, 0, 0))
        elif isinstance(layer, nf.ConvSpec):
            kh, kw = layer.kernel_size
            cin_g = layer.in_channels // layer.groups
            n_out = int(np.prod(layer.shape))
            fanout = conv_fanout_map(shape[1:], layer)
            syn = int(fanout.sum()) * shape[0] * (layer.out_channels // layer.groups)
            p = int(layer.weight.size)
            rows.append(LayerStats(i, layer.name, "conv", layer.shape, p, p, n_out, syn, p,
                                   cin_g * kh * kw, n_out * cin_g * kh * kw))
            shape = layer.shape
        elif isinstance(layer, nf.SESpec):
            c, h, w = layer.shape
            j, pos = layer.hidden, h * w
            p = 2 * c * j + j + c
            # fc1 (tiled over positions) + fc2 pair + broadcast pair + 3 relays + 2 bias Dense
            syn = j * c * pos + 2 * c * j + 2 * c * pos + 3 * c * pos + j + 2 * c
            neurons = j + 2 * c + 2 * c * pos + c * pos  # GradedReluVec x2, GradedVec relays, ProdNeuron
            rows.append(LayerStats(i, layer.name, "se", layer.shape, p, p, neurons, syn, p + 2 * c + 3 * c,
                                   max(c * pos + 1, j + 1, 2), c * pos + 2 * c * j + c * pos))
        elif isinstance(layer, nf.FlattenSpec):
            shape = (int(np.prod(shape)),)
            rows.append(LayerStats(i, "flatten", "flatten", shape, 0, 0, 0, 0, 0, 0, 0))
        elif isinstance(layer, nf.DenseSpec):
            n_in, n_out = int(np.prod(shape)), layer.shape[0]
            p = int(layer.weight.size)
            rows.append(LayerStats(i, layer.name, "dense", layer.shape, p, p, n_out, n_in * n_out, p, n_in, n_in * n_out))
            shape = layer.shape
    return rows


def totals(rows: list[LayerStats]) -> dict[str, int]:
    keys = ("parameters", "weight_bytes", "neurons", "synapses", "unique_weights", "ann_macs")
    return {k: int(sum(getattr(r, k) for r in rows)) for k in keys}


def se_relay_neurons(layer: nf.SESpec) -> int:
    """GradedVec relay neurons of an SE gate (two hops of C*H*W; the third hop ends in ProdNeuron)."""
    return 2 * int(np.prod(layer.shape))


def bias_fanout(spec: nf.NetworkSpec) -> int:
    """Synapses driven, every step, by the always-firing bias neuron (the SE biases)."""
    return sum(l.hidden + 2 * l.shape[0] for l in spec.layers if isinstance(l, nf.SESpec))


def stage_neurons(spec: nf.NetworkSpec) -> dict[str, int]:
    """Neurons (compartments) behind each counted stage; the image input has none on chip."""
    out = {"input": 0}
    for layer in spec.layers:
        if isinstance(layer, (nf.ConvSpec, nf.DenseSpec)):
            out[layer.name] = int(np.prod(layer.shape))
        elif isinstance(layer, nf.SESpec):
            out[f"{layer.name}.squeeze"] = layer.hidden
            out[f"{layer.name}.excite"] = 2 * layer.shape[0]
            out[f"{layer.name}.scale"] = int(np.prod(layer.shape))
    return out
