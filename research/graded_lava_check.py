"""Can Lava's fixed-point sigma-delta neurons run a graded conv network exactly, one message per
active neuron on a static image? (research; a feasibility check for a graded v2, not product code)

A small network of the graded probe's kind (``graded_probe.py``): the image (graded pixels) sent
once from a source, then per layer Lava's ``Conv`` (8-bit weights, stride 2) into a ``SigmaDelta``
neuron (ReLU, threshold, bias, ``state_exp``: the message is the activation shifted right). Its
messages at every step are compared, value for value, with an integer numpy reference:

    act = relu(conv(message of the layer before) + bias << s);  message = act >> s if act >= vth << s

(``conv`` is Lava's own ``conv`` utility, the arithmetic of the ``Conv`` process; the check is of
the neurons' dynamics and timing). Three bias settings: every relu(bias) below the threshold;
biases above it, where a neuron sends a message from its bias alone before the input reaches it and
a correction after; and the same biases delivered instead as a one-time input (``bias << s``, from
a source into the neuron's input port) at the step the layer's input arrives, the neuron's own bias 0.

    python research/graded_lava_check.py
"""
import numpy as np

import lava_allnet._lava  # noqa: F401  (Lava on Python 3.11)
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.conv import utils as conv_utils
from lava.proc.conv.process import Conv
from lava.proc.io.sink import RingBuffer as Sink
from lava.proc.io.source import RingBuffer as Source
from lava.proc.sdn.process import ActivationMode, SigmaDelta

from hw_targets import lava_runtime

SIDE, CHANNELS, STEPS = 16, (3, 8, 8), 6
SHIFTS, VTH = (6, 7), (3, 2)  # per layer: state_exp (message = act >> s) and threshold in message units


def reference(image: np.ndarray, weights, biases) -> list[np.ndarray]:
    """Per layer, the (X, Y, C) message of the static image (one pass)."""
    out, m = [], image.astype(np.int64)
    for w, b, s, v in zip(weights, biases, SHIFTS, VTH):
        a = conv_utils.conv(m, w, (3, 3), (2, 2), (1, 1), (1, 1), 1).astype(np.int64)
        act = np.maximum(a + (b.astype(np.int64) << s), 0)
        m = np.where(act >= (v << s), act >> s, 0)
        out.append(m)
    return out


def lava_messages(image: np.ndarray, weights, biases, bias_as_input: bool = False) -> list[np.ndarray]:
    """Per layer, its SigmaDelta messages at every step, (X, Y, C, STEPS)."""
    frames = np.zeros(image.shape + (STEPS,), dtype=np.int32)
    frames[..., 0] = image  # the image once, at the first step
    src = Source(data=frames)
    port, shape, sinks = src.s_out, image.shape, []
    for k, (w, b, s, v) in enumerate(zip(weights, biases, SHIFTS, VTH), start=1):
        conv = Conv(weight=w, input_shape=shape, stride=2, padding=1, num_message_bits=24)
        port.connect(conv.s_in)
        shape = conv.output_shape
        sd = SigmaDelta(shape=shape, vth=v, bias=0 if bias_as_input else b, act_mode=ActivationMode.RELU,
                        state_exp=s, spike_exp=0)
        conv.a_out.connect(sd.a_in)
        if bias_as_input:  # the layer's input reaches it at step k (each Conv adds one step)
            once = np.zeros(shape + (STEPS,), dtype=np.int32)
            once[..., k] = b.astype(np.int64) << s
            Source(data=once).s_out.connect(sd.a_in)  # sends data[..., t-1] at step t
        sink = Sink(shape=shape, buffer=STEPS)
        sd.s_out.connect(sink.a_in)
        port = sd.s_out
        sinks.append(sink)
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    with lava_runtime.running(src, cfg):
        src.run(condition=RunSteps(num_steps=STEPS), run_cfg=cfg)
        return [np.asarray(k.data.get(), dtype=np.int64) for k in sinks]


def check(name: str, bias_high: int, bias_as_input: bool = False, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (SIDE, SIDE, CHANNELS[0]))
    weights = [rng.integers(-127, 128, (co, 3, 3, ci)) for ci, co in zip(CHANNELS[:-1], CHANNELS[1:])]
    biases = [rng.integers(-20, bias_high + 1, (SIDE >> (k + 1), SIDE >> (k + 1), co))
              for k, co in enumerate(CHANNELS[1:])]
    ref = reference(image, weights, biases)
    got = lava_messages(image, weights, biases, bias_as_input)
    for k, (r, g) in enumerate(zip(ref, got), start=1):
        steps_with = [t for t in range(STEPS) if g[..., t].any()]
        total = g.sum(-1)  # what the next layer's sigma holds at the end
        sent = int((g != 0).sum())
        print(f"{name}: layer {k}: messages at steps {steps_with}; {sent} messages from "
              f"{int((r != 0).sum())} active of {r.size} neurons; received sum == reference: "
              f"{np.array_equal(total, r)}; first message == reference: {np.array_equal(g[..., steps_with[0]] if steps_with else 0 * r, r)}")


if __name__ == "__main__":
    check("biases below threshold", bias_high=VTH[1] - 1)
    check("biases above threshold", bias_high=12)
    check("the same biases as a one-time input", bias_high=12, bias_as_input=True)
