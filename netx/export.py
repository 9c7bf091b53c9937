"""Torch model ⇄ NetworkSpec: export a trained network, rebuild one from a file."""
from __future__ import annotations

import os

import numpy as np
import torch

from lava_allnet import fixed_point as fx
from lava_allnet.config import NeuronConfig
from lava_allnet.graded import GradedLayer, GradedNetwork
from lava_allnet.model import ConvBlock, DenseBlock, Network, SEBlock, neuron_bias
from netx import format as nf


def _neuron_spec(block: ConvBlock | DenseBlock) -> nf.NeuronSpec:
    n = block.neuron
    return nf.NeuronSpec(
        i_decay=int(n.cx_current_decay),
        v_decay=int(n.cx_voltage_decay),
        vth_mant=int(n.v_th_mant),
        ref_delay=int(n.ref_delay),
    )


def _bias(block: ConvBlock | DenseBlock) -> np.ndarray | None:
    mean = neuron_bias(block)
    return None if mean is None else fx.bias_mantissa_from_mean(mean)


def _set_bias(block: ConvBlock | DenseBlock, bias: np.ndarray | None) -> None:
    if bias is None:
        block.neuron.norm = None
        return
    norm = block.neuron.norm
    norm.running_mean.copy_(fx.mean_from_bias_mantissa(bias))
    norm.update = False


def _ints(t: torch.Tensor) -> np.ndarray:
    return torch.round(t.detach().float()).cpu().numpy().astype(np.int32)


def spec_from_network(net: Network) -> nf.NetworkSpec:
    """The exact integer description of a torch Network."""
    c, h, w = net.input_shape
    layers: list[nf.LayerSpec] = [nf.InputSpec((c, h, w), net.input_bits, send_once=net.input_once)]
    shape = (c, h, w)
    with torch.no_grad():
        for name, block in net.blocks.items():
            if isinstance(block, ConvBlock):
                s = block.synapse
                out_c = s.out_channels
                kh, kw = s.kernel_size[:2]
                st, pd, dl = s.stride[:2], s.padding[:2], s.dilation[:2]
                oh = (shape[1] + 2 * pd[0] - dl[0] * (kh - 1) - 1) // st[0] + 1
                ow = (shape[2] + 2 * pd[1] - dl[1] * (kw - 1) - 1) // st[1] + 1
                layers.append(
                    nf.ConvSpec(
                        (out_c, oh, ow), s.in_channels, out_c, (kh, kw), tuple(st), tuple(pd), tuple(dl),
                        s.groups, _ints(block.weight * fx.WEIGHT_SCALE), _neuron_spec(block),
                        block.input_message_bits, name=name, bias=_bias(block),
                    )
                )
                shape = (out_c, oh, ow)
            elif isinstance(block, SEBlock):
                f = block.fixed
                m = block.mantissas()
                layers.append(
                    nf.SESpec(
                        shape, f.hidden, _ints(m["weight1"]), _ints(m["bias1"]), _ints(m["weight2"]),
                        _ints(m["bias2"]), f.squeeze_exp, f.excite_exp, f.bias1_exp, f.bias2_exp,
                        f.gate_levels, name=name,
                    )
                )
            elif isinstance(block, DenseBlock):
                if len(shape) != 1:
                    layers.append(nf.FlattenSpec(name="flatten"))
                out = block.synapse.out_channels
                layers.append(
                    nf.DenseSpec((out,), _ints(block.weight * fx.WEIGHT_SCALE), _neuron_spec(block), block.input_message_bits,
                                 name=name, bias=_bias(block))
                )
                shape = (out,)
            else:  # pragma: no cover
                raise TypeError(f"cannot export block {name} of type {type(block).__name__}")
    config = net.config.to_dict() if getattr(net, "config", None) is not None else None
    return nf.NetworkSpec(layers, net.class_names, net.time_steps, net.population, config, frontend=net.frontend)


def spec_from_graded(net: GradedNetwork) -> nf.NetworkSpec:
    """The file description of a graded network (format version 4; its training config, if it has one)."""
    c, h, w = net.input_shape
    layers: list[nf.LayerSpec] = [nf.InputSpec((c, h, w), 8, send_once=True)]
    shape: tuple[int, ...] = (c, h, w)
    bits = 8
    for l in net.layers:
        neuron = nf.GradedNeuronSpec(l.shift, l.vth, relu=l.vth > 0)
        weight, bias = np.asarray(l.weight, dtype=np.int32), np.asarray(l.bias, dtype=np.int64)
        if l.kind == "conv":
            out_c, _, kh, kw = weight.shape
            oh = (shape[1] + 2 * l.padding - kh) // l.stride + 1
            ow = (shape[2] + 2 * l.padding - kw) // l.stride + 1
            layers.append(nf.ConvSpec((out_c, oh, ow), shape[0], out_c, (kh, kw), (l.stride,) * 2, (l.padding,) * 2,
                                      (1, 1), 1, weight, neuron, bits, name=l.name, bias=bias))
            shape = (out_c, oh, ow)
        else:
            if len(shape) != 1:
                layers.append(nf.FlattenSpec(name="flatten"))
            layers.append(nf.DenseSpec((weight.shape[0],), weight, neuron, bits, name=l.name, bias=bias))
            shape = (weight.shape[0],)
        bits = 24  # graded messages: Loihi 2's 24-bit payload
    config = net.config.to_dict() if getattr(net, "config", None) is not None else None
    return nf.NetworkSpec(layers, net.class_names, 1, 1, config, frontend=net.frontend)


def graded_from_spec(spec: nf.NetworkSpec) -> GradedNetwork:
    """The integer network a graded file describes."""
    layers = []
    for layer in spec.layers[1:]:
        if isinstance(layer, nf.ConvSpec):
            if layer.stride[0] != layer.stride[1] or layer.padding[0] != layer.padding[1] or layer.groups != 1 \
                    or layer.dilation != (1, 1):
                raise ValueError(f"{layer.name}: graded conv layers are square, ungrouped and undilated")
            kind, stride, padding = "conv", layer.stride[0], layer.padding[0]
        elif isinstance(layer, nf.DenseSpec):
            kind, stride, padding = "dense", 1, 0
        else:
            continue
        n = layer.neuron
        bias = np.zeros(layer.weight.shape[0], np.int64) if layer.bias is None else layer.bias
        layers.append(GradedLayer(layer.name, kind, layer.weight, bias, n.shift, n.vth, stride, padding))
    net = GradedNetwork(layers, spec.input.shape, spec.class_names, spec.frontend)
    net.eval()
    return net


def export(net: Network | GradedNetwork, path: str | os.PathLike) -> nf.NetworkSpec:
    spec = spec_from_graded(net) if isinstance(net, GradedNetwork) else spec_from_network(net)
    nf.write(spec, path)
    return spec


def _neuron_config(n: nf.NeuronSpec) -> NeuronConfig:
    # Exact: SLAYER recovers the same mantissas from these fractions.
    return NeuronConfig(
        threshold=n.threshold,
        current_decay=n.i_decay / (1 << fx.DECAY_BITS),
        voltage_decay=n.v_decay / (1 << fx.DECAY_BITS),
    )


def network_from_spec(spec: nf.NetworkSpec) -> Network | GradedNetwork:
    """A torch Network computing exactly what the file describes."""
    if spec.graded:
        return graded_from_spec(spec)
    blocks: list[tuple[str, torch.nn.Module]] = []
    shape: tuple[int, ...] = spec.input.shape
    for layer in spec.layers[1:]:
        if isinstance(layer, nf.ConvSpec):
            block = ConvBlock(
                layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                _neuron_config(layer.neuron), layer.input_message_bits, layer.dilation, layer.groups,
                norm=layer.bias is not None,
            )
            with torch.no_grad():
                block.synapse.weight.copy_(fx.weight_from_mantissa(layer.weight)[..., None])
                _set_bias(block, layer.bias)
            blocks.append((layer.name, block))
            shape = layer.shape
        elif isinstance(layer, nf.SESpec):
            c, h, w = layer.shape
            block = SEBlock(c, layer.hidden, h, w, layer.gate_levels)
            f = block.fixed
            with torch.no_grad():
                block.w1.copy_(fx.weight_from_mantissa(layer.weight1))
                block.w2.copy_(fx.weight_from_mantissa(layer.weight2))
                # bias_mantissa(b) = round(b * unit / 2) * 2: b = mantissa / unit is exact
                block.b1.copy_(torch.as_tensor(layer.bias1 / 2 ** (f.hidden_bits - f.bias1_exp), dtype=torch.float32))
                block.b2.copy_(torch.as_tensor(layer.bias2 / 2 ** (f.gate_bits - f.bias2_exp), dtype=torch.float32))
            blocks.append((layer.name, block))
        elif isinstance(layer, nf.DenseSpec):
            n_in = int(np.prod(shape))
            block = DenseBlock(n_in, layer.shape[0], _neuron_config(layer.neuron), layer.input_message_bits,
                               norm=layer.bias is not None)
            with torch.no_grad():
                _set_bias(block, layer.bias)
                block.synapse.weight.copy_(fx.weight_from_mantissa(layer.weight).reshape(block.synapse.weight.shape))
            blocks.append((layer.name, block))
            shape = layer.shape
        elif isinstance(layer, nf.FlattenSpec):
            shape = (int(np.prod(shape)),)
    net = Network(blocks, spec.input.shape, spec.input.message_bits, spec.time_steps, spec.class_names, spec.population,
                  input_once=spec.input.send_once)
    net.frontend = spec.frontend
    net.eval()
    return net
