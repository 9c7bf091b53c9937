"""NeurALLNet: a compact CUBA convolutional SNN with squeeze-and-excitation gates.

Blocks follow lava-dl's SLAYER blocks (a block = synapse + neuron, the export
lives in ``netx.export``): SLAYER's synapse weights with ``quantize_8bit`` and
SLAYER's CUBA neuron, so the fixed-point behaviour is lava-dl's own.

Timing. SLAYER blocks usually delay every layer by one step (``delay_shift``)
to mimic Lava's one-step hop, so the output only sees T - depth steps. Here no
block shifts: every stage sees all T steps of its input, aligned. The Lava
graph (``netx.build``) runs each stage ``depth`` steps later and resets its
neurons at the start of its own T-step window (``LIFReset`` offsets), which is
exactly equivalent and lets T be smaller than the network depth.
"""
from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from lava_allnet import fixed_point as fx
from lava_allnet._lava import slayer
from lava_allnet.config import ModelConfig, NeuronConfig
from lava_allnet.frontend import FrontEnd


def _neuron(cfg: NeuronConfig, channels: int = 0):
    """SLAYER's CUBA neuron with a threshold epsilon that survives float32.

    SLAYER emulates Loihi's ``v > vth`` as ``v >= vth + 0.01/4096``; in
    float32 that epsilon vanishes for thresholds above ~8 (the scaled
    thresholds of graded-input layers), so its Spike function fires at
    v == vth while its reset does not. Half a state unit (2**-13) is exact in
    float32 for every legal threshold (< 2048) and keeps both on ``v > vth``.

    channels > 0 adds a mean-only batch norm over that many channels.
    """
    neuron = slayer().neuron.cuba.Neuron(
        threshold=cfg.threshold,
        current_decay=cfg.current_decay,
        voltage_decay=cfg.voltage_decay,
        tau_grad=cfg.tau_grad,
        scale_grad=cfg.scale_grad,
        scale=fx.WEIGHT_SCALE,
        shared_param=True,
        requires_grad=False,
    )
    neuron.threshold_eps = 0.5 / neuron.s_scale
    if channels:
        # mean-only batch norm with the channel count fixed up front (so checkpoints load)
        # and its mean on the Lava bias grid (SLAYER's default quantize_8bit clamps at +-4)
        neuron.norm = slayer().neuron.norm.MeanOnlyBatchNorm(num_features=channels, pre_hook_fx=fx.quantize_norm_mean)
    return neuron


class _Conv2d(torch.autograd.Function):
    """conv2d on channels-last input (what ConvBlock passes), event-driven where the input is sparse.

    Channels-last because mkldnn's strided convs and their combined backward ran
    ~2x faster so on this CPU than NCHW (whose combined backward had been ~2x
    slower than conv_transpose2d + conv2d_weight).
    """

    @staticmethod
    def forward(ctx, x, w, stride, padding, dilation, groups):  # type: ignore[override]
        from lava_allnet.kernels import event_conv

        ctx.save_for_backward(x, w)
        ctx.conf = (stride, padding, dilation, groups)
        # spikes are mostly zeros: skip them where that pays (same result, exactly)
        ctx.events = event_conv.supported(x, w, stride, padding, dilation, groups) and event_conv.worthwhile(x)
        if ctx.events:
            return event_conv.conv2d(x, w, stride[0], padding[0])
        return F.conv2d(x, w, None, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        x, w = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        g = g.contiguous(memory_format=torch.channels_last)
        weight_events = ctx.events and ctx.needs_input_grad[1]
        gx, gw, _ = torch.ops.aten.convolution_backward(
            g, x, w, None, stride, padding, dilation, False, (0, 0), groups,
            (ctx.needs_input_grad[0], ctx.needs_input_grad[1] and not weight_events, False),
        )
        if weight_events:
            from lava_allnet.kernels import event_conv

            gw = event_conv.conv2d_weight(x, w.shape[2], g, stride[0], padding[0])
        return gx, gw, None, None, None, None


def _norm_tm(norm, current: torch.Tensor, channel_axis: int = 2) -> torch.Tensor:
    """SLAYER's MeanOnlyBatchNorm on a time-major (N, T, ...) current.

    Same rule as ``MeanOnlyBatchNorm.forward`` (batch mean while training,
    running mean otherwise, quantised by its pre-hook), with the channel on
    ``channel_axis`` (2: (N, T, C, ...); -1: channels-last (N, T, H, W, C))
    instead of 1. At inference (running mean) it is exact.
    """
    centre, batch_mean = _norm_centre(norm, current, channel_axis)
    if batch_mean is None:
        return current - centre
    return _SubtractBatchMean.apply(current, centre, batch_mean)


class _SubtractBatchMean(torch.autograd.Function):
    """current - centre, where centre = hook(mean) is current's per-channel batch mean, differentiated through it.

    The gradient autograd gives ``current - hook(current.mean(dims))``
    (g - hook'(mean) sum(g) / count), in one reduction and one fused pass instead
    of a negation, a reduction, a division and an addition over the whole state.
    """

    @staticmethod
    def forward(ctx, current, centre, batch_mean):  # type: ignore[override]
        ctx.batch_mean = batch_mean
        return current - centre

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        from lava_allnet.kernels import fast_cuba

        axis = ctx.batch_mean[2]
        total = g.sum(dim=[d for d in range(g.dim()) if d != axis])
        return g + fast_cuba.batch_mean_gradient(ctx.batch_mean, total, g.numel() // g.shape[axis]), None, None


def cuba(
    neuron, z: torch.Tensor, time_steps: int | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A SLAYER CUBA neuron on time-major input: (spikes, current, voltage), time-major (N, T, ...).

    z: (N, T, ...), or (N, ...) held for ``time_steps`` steps (a conv of the
    static image). Equal bit for bit to ``neuron.dynamics`` + ``neuron.spike``
    on the time-last tensor (SLAYER's layout), without the permute copies
    (lava_allnet/kernels/fast_cuba; see :func:`reference_forward` for lava-dl's own path).
    """
    from lava_allnet.kernels import fast_cuba

    held = time_steps is not None
    # The dynamics are per neuron, so a channels-last z runs as its contiguous
    # (N, [T,] H, W, C) permutation (no copy) and the results are permuted back.
    cl = fast_cuba.is_channels_last_tm(z.unsqueeze(1) if held else z)
    if cl:
        z = z.permute(0, 2, 3, 1) if held else z.permute(0, 1, 3, 4, 2)
    q = slayer().utils.quantize
    thr = neuron.threshold + neuron.threshold_eps
    cuba_mod = slayer().neuron.cuba
    tau_rho = neuron.tau_rho * cuba_mod.TAU_RHO_MULT
    scale_rho = neuron.scale_rho * cuba_mod.SCALE_RHO_MULT
    decay_u, decay_v = q(neuron.current_decay), q(neuron.voltage_decay)
    axis = -1 if cl else 2
    if fast_cuba.fused_ok(z, decay_u, decay_v):
        # One kernel per state: the held input is never repeated T times, and
        # the norm's subtraction and the spikes ride along with the voltage.
        batch_mean = neuron.norm is not None and neuron.norm.training and neuron.norm.update
        current, time_sums = fast_cuba.current_tm(z, time_steps, decay_u, neuron.s_scale, batch_mean)
        bias, norm_grad = None, None
        if neuron.norm is not None:
            centre, norm_grad = _norm_centre(neuron.norm, current, axis, time_sums)
            bias = centre.expand(current.shape[2:]).contiguous().reshape(-1)
        voltage, spikes = fast_cuba.voltage_spike_tm(
            current, bias, decay_v, neuron.s_scale, thr, tau_rho, scale_rho, norm_grad
        )
    else:
        if held:
            z = z.unsqueeze(1).expand(z.shape[0], time_steps, *z.shape[1:])
        current = fast_cuba.li_dynamics_tm(z, decay_u, neuron.s_scale)
        driven = current if neuron.norm is None else _norm_tm(neuron.norm, current, axis)
        voltage = fast_cuba.li_dynamics_tm(driven, decay_v, neuron.s_scale, thr)
        spikes = fast_cuba.spike_tm(voltage, thr, tau_rho, scale_rho)
    if cl:
        return tuple(t.permute(0, 1, 4, 2, 3) for t in (spikes, current, voltage))  # type: ignore[return-value]
    return spikes, current, voltage


# Data-parallel training (training/distributed.py) sets this inside each training step: a function
# that sums a tensor over the ranks. The batch means then are the global batch's, as the deployed
# biases must be, and their gradient sums over the ranks too (cf. torch's SyncBatchNorm).
_NORM_REDUCE: Callable[[torch.Tensor], torch.Tensor] | None = None


@contextlib.contextmanager
def synced_batch_norm(reduce: Callable[[torch.Tensor], torch.Tensor]) -> Iterator[None]:
    """Within this block, batch-norm means in training are taken over every rank's batch:
    ``reduce(t)`` returns the sum of ``t`` over the ranks (it is called by every rank in the same order)."""
    global _NORM_REDUCE
    previous, _NORM_REDUCE = _NORM_REDUCE, reduce
    try:
        yield
    finally:
        _NORM_REDUCE = previous


def _norm_centre(norm, current: torch.Tensor, channel_axis: int, time_sums: torch.Tensor | None = None):
    """What :func:`_norm_tm` subtracts, shaped to broadcast over one sample's neurons
    (current.shape[2:]), and for a batch mean the (mean, centre, axis, shape, reduce, count) its
    gradient needs (see fast_cuba.voltage_spike_tm); None at inference.
    time_sums: the current's sums over time per sample and neuron, if at hand."""
    from lava_allnet.kernels import fast_cuba

    axis = channel_axis % current.dim()
    shape = [1] * current.dim()
    shape[axis] = current.shape[axis]
    if norm.training and norm.update:
        reduce, count = _NORM_REDUCE, current.numel() // current.shape[axis]
        with torch.no_grad():
            if reduce is not None:
                # the global batch's mean: per-channel sums (in float64) and counts summed over the ranks
                if time_sums is None:
                    sums = current.double().sum(dim=[d for d in range(current.dim()) if d != axis])
                else:
                    sums = fast_cuba.channel_sums(time_sums.double(), current.shape, axis)
                both = reduce(torch.cat([sums, sums.new_tensor([count])]))
                count = int(round(float(both[-1])))
                mean = (both[:-1] / count).to(current.dtype)
            elif time_sums is None:
                mean = current.mean(dim=[d for d in range(current.dim()) if d != axis])
            else:
                mean = fast_cuba.channel_sums(time_sums, current.shape, axis) / count
            norm.running_mean = (1 - norm.momentum) * norm.running_mean + norm.momentum * mean
        with torch.enable_grad():
            leaf = mean.detach().requires_grad_()
            centre = norm.pre_hook_fx(leaf)
        return centre.detach().view(shape[2:]), (leaf, centre, axis, shape, reduce, count)
    # a learned bias (training.features.learn_norm_means) carries its gradient; a held or running mean has none
    return norm.pre_hook_fx(norm.running_mean).view(shape[2:]), None


class ConvBlock(torch.nn.Module):
    """Strided conv synapse + CUBA neuron.

    The conv runs as conv2d over (N*T) frames instead of SLAYER's conv3d;
    with 2/64-grid weights and integer inputs every product and partial sum is
    an exact float32, so the result is identical and much faster on CPU.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int],
        padding: int | tuple[int, int],
        neuron: NeuronConfig,
        input_message_bits: int,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        norm: bool = False,
    ) -> None:
        """neuron.threshold is already scaled to the input (fixed_point.scaled_threshold);
        input_message_bits: 0 for binary spikes, else the graded message width."""
        super().__init__()
        self.synapse = slayer().synapse.Conv(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding,
            dilation=dilation, groups=groups, pre_hook_fx=fx.quantize_weight,
        )
        self.neuron = _neuron(neuron, out_channels if norm else 0)
        self.input_message_bits = input_message_bits

    @property
    def weight(self) -> torch.Tensor:
        """Quantised weight (out, in, kH, kW)."""
        return fx.quantize_weight(self.synapse.weight)[..., 0]

    def synaptic_input(self, x: torch.Tensor) -> torch.Tensor:
        """Synaptic current of x: (N, T, C, H, W) time-major, or (N, C, H, W) for a static image.

        Channels-last in memory (mkldnn's strided convs and their gradients
        ran ~2x faster so on this CPU); the neurons work in any layout.
        """
        frames = x if x.dim() == 4 else x.reshape(-1, *x.shape[2:])
        z = _Conv2d.apply(frames.contiguous(memory_format=torch.channels_last), self.weight, *self._conf())
        return z if x.dim() == 4 else z.view(*x.shape[:2], *z.shape[1:])

    def _conf(self) -> tuple:
        s = self.synapse
        return tuple(s.stride[:2]), tuple(s.padding[:2]), tuple(s.dilation[:2]), s.groups

    def forward(self, x: torch.Tensor, time_steps: int, once: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: (N, T, C, H, W), or the static image (N, C, H, W), whose conv is held
        for every step rather than repeated. Returns (spikes (N, T, C, H, W), current, voltage).

        once: the static image arrives at the first step only (zeros after), as Lava sends it
        with ``InputSpec.send_once``; with current decay 0 the current then holds it."""
        z = self.synaptic_input(x)
        if once and x.dim() == 4:
            n, c, h, w = z.shape
            # time-major and channels-last like the held path's layout (no copy in the kernels)
            tm = z.new_zeros((n, time_steps, h, w, c)).permute(0, 1, 4, 2, 3)
            tm[:, 0] = z
            return cuba(self.neuron, tm)
        return cuba(self.neuron, z, time_steps if x.dim() == 4 else None)


def neuron_bias(block: "ConvBlock | DenseBlock") -> torch.Tensor | None:
    """The mean a block's batch norm subtracts (running mean), or None without norm."""
    norm = block.neuron.norm
    if norm is None:
        return None
    return norm.running_mean


class SEBlock(torch.nn.Module):
    """Squeeze-and-excitation gate on spikes, in Lava's integer arithmetic.

    gate = clamp(w2 relu(w1 mean(s) + b1) + b2, 0, 1) per channel and time
    step, quantised by :class:`lava_allnet.fixed_point.SEFixedPoint`; the
    output is the gated graded spike s * gate * G.
    """

    STAGES = ("squeeze", "excite", "scale")  # spikes and gates are time-major (N, T, ...)

    def __init__(self, channels: int, hidden: int, height: int, width: int, gate_levels: int) -> None:
        super().__init__()
        self.fixed = fx.SEFixedPoint(channels, hidden, height, width, gate_levels)
        self.fixed.validate()
        self.w1 = torch.nn.Parameter(torch.empty(hidden, channels).uniform_(-1, 1) * (3 / channels) ** 0.5)
        self.b1 = torch.nn.Parameter(torch.zeros(hidden))
        self.w2 = torch.nn.Parameter(torch.empty(channels, hidden).uniform_(-1, 1) * (3 / hidden) ** 0.5)
        self.b2 = torch.nn.Parameter(torch.full((channels,), 0.5))

    def forward(self, spikes: torch.Tensor):
        return self.fixed.forward(spikes, self.w1, self.b1, self.w2, self.b2)

    def mantissas(self) -> dict[str, torch.Tensor]:
        f = self.fixed
        with torch.no_grad():
            return {
                "weight1": torch.round(fx.quantize_weight(self.w1) * fx.WEIGHT_SCALE),
                "bias1": f.bias_mantissa(self.b1, 1),
                "weight2": torch.round(fx.quantize_weight(self.w2) * fx.WEIGHT_SCALE),
                "bias2": f.bias_mantissa(self.b2, 2),
            }


class DenseBlock(torch.nn.Module):
    """Dense synapse + CUBA neuron over flattened (C, H, W) features."""

    def __init__(
        self, in_features: int, out_features: int, neuron: NeuronConfig, input_message_bits: int, norm: bool = False
    ) -> None:
        super().__init__()
        self.synapse = slayer().synapse.Dense(in_features, out_features, pre_hook_fx=fx.quantize_weight)
        self.neuron = _neuron(neuron, out_features if norm else 0)
        self.input_message_bits = input_message_bits

    @property
    def weight(self) -> torch.Tensor:
        return fx.quantize_weight(self.synapse.weight).reshape(self.synapse.weight.shape[0], -1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (N, T, ...) time-major; returns (spikes (N, T, out), current, voltage)."""
        n, t = x.shape[:2]
        flat = x.reshape(n, t, -1)  # C-order (C, H, W) flatten, like Lava's transpose+flatten
        return cuba(self.neuron, F.linear(flat, self.weight))


@dataclass
class Output:
    """What one forward pass produced, per image of the batch."""

    class_counts: torch.Tensor  # (N, K) output spikes per class (population sum), differentiable
    stage_steps: dict[str, torch.Tensor] = field(default_factory=dict)  # name → (N, T) messages per step
    stage_weighted: dict[str, torch.Tensor] = field(default_factory=dict)  # name → (N, T) weighted messages
    output_neurons: torch.Tensor | None = None  # (N, n_out) spikes per output neuron
    stage_active: dict[str, torch.Tensor] = field(default_factory=dict)  # name → (N,) neurons active
    overflow: int = 0  # currents outside Loihi's 24-bit register, where Lava wraps (must be 0)
    range_penalty: torch.Tensor | float = 0.0  # training only: fixed_point.state_range_penalty summed
    activations: dict[str, torch.Tensor] = field(default_factory=dict)  # only if asked

    @property
    def stage_counts(self) -> dict[str, torch.Tensor]:
        return {k: v.sum(1) for k, v in self.stage_steps.items()}

    def predictions(self) -> torch.Tensor:
        """Most output spikes wins; ties go to the lowest class index."""
        return torch.argmax(self.class_counts, dim=1)


class Network(torch.nn.Module):
    """A feed-forward chain of named blocks: ConvBlock / SEBlock ... DenseBlock.

    The input is the encoded image (graded messages, constant in time); the
    last block is the output population layer (``population`` neurons per class).
    """

    def __init__(
        self,
        blocks: list[tuple[str, torch.nn.Module]],
        input_shape: tuple[int, int, int],
        input_bits: int,
        time_steps: int,
        class_names: tuple[str, ...],
        population: int,
        input_once: bool = False,
    ) -> None:
        super().__init__()
        if not blocks or not isinstance(blocks[-1][1], DenseBlock):
            raise ValueError("the last block must be the dense output layer")
        self.blocks = torch.nn.ModuleDict(blocks)
        self.input_shape = tuple(input_shape)
        self.input_bits = input_bits
        self.time_steps = time_steps
        self.class_names = tuple(class_names)
        self.population = population
        self.input_once = input_once  # the image reaches the first layer at step 0 only (ConvBlock once)
        # applied to uint8 images before encode() by every caller that has raw images (backends,
        # trainer, Grad-CAM): a fitted map, not a layer (lava_allnet.frontend)
        self.frontend = FrontEnd()
        out = blocks[-1][1].synapse.out_channels
        if out != len(class_names) * population:
            raise ValueError(f"output layer has {out} neurons for {len(class_names)} classes x {population}")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def stage_names(self) -> list[str]:
        names = ["input"]
        for name, block in self.blocks.items():
            names += [f"{name}.{s}" for s in SEBlock.STAGES] if isinstance(block, SEBlock) else [name]
        return names

    def conv_names(self) -> list[str]:
        return [n for n, b in self.blocks.items() if isinstance(b, ConvBlock)]

    def encode(self, images_uint8: torch.Tensor) -> torch.Tensor:
        return fx.encode_pixels_torch(images_uint8, self.input_bits)

    def forward(
        self,
        x: torch.Tensor,
        record: bool = False,
        keep: tuple[str, ...] = (),
        weights: dict[str, torch.Tensor] | None = None,
        range_penalty: bool = False,
    ) -> Output:
        """x: encoded input (N, C, H, W) float, see :meth:`encode`.

        record: also count messages per stage and step, and check the 24-bit range.
        keep: stage names whose tensors to return (e.g. for Grad-CAM).
        weights: per-stage neuron weights (stage shape without N, T), e.g. fan-outs,
            to count weighted messages (synaptic operations) per step.
        range_penalty: also return the differentiable 24-bit state-range penalty
            (training only; a full pass over every state, so only when asked).
        """
        steps: dict[str, torch.Tensor] = {}
        weighted: dict[str, torch.Tensor] = {}
        active: dict[str, torch.Tensor] = {}
        acts: dict[str, torch.Tensor] = {}
        overflow = 0
        penalty: torch.Tensor | float = 0.0

        def note(name: str, t: torch.Tensor) -> None:
            """t: (N, T, ...) time-major messages of one stage."""
            if record:
                nz = (t.detach() != 0).flatten(2)  # (N, T, neurons)
                steps[name] = nz.sum(2)
                active[name] = nz.any(1).sum(1)
                if weights is not None and name in weights:
                    w = weights[name].to(torch.float64).reshape(-1)
                    weighted[name] = (nz.to(torch.float64) @ w).round().long()
            if name in keep:
                acts[name] = t

        if record or "input" in keep:
            if self.input_once:
                sent = x.new_zeros((x.shape[0], self.time_steps, *x.shape[1:]))
                sent[:, 0] = x
            else:
                sent = x.unsqueeze(1).expand(x.shape[0], self.time_steps, *x.shape[1:])
            note("input", sent)
        first = True
        for name, block in self.blocks.items():
            if isinstance(block, SEBlock):
                x, a1, rows, _gate = block(x)
                note(f"{name}.squeeze", a1)
                note(f"{name}.excite", rows)
                note(f"{name}.scale", x)
                continue
            if isinstance(block, ConvBlock):
                x, current, voltage = block(x, self.time_steps, once=first and self.input_once)
            else:
                x, current, voltage = block(x)
            first = False
            note(name, x)
            if record:
                overflow += fx.check_state_range(current.detach())
            if range_penalty and torch.is_grad_enabled():
                penalty = penalty + fx.state_range_penalty(current, voltage)
        n = x.shape[0]
        class_counts = x.reshape(n, -1, self.num_classes, self.population).sum(dim=(1, 3))
        neurons = x.detach().sum(1).long() if record else None
        return Output(class_counts, steps, weighted, neurons, active, overflow, activations=acts, range_penalty=penalty)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor, target_rate: float = 0.1, fc_rate: float = 0.15) -> dict[str, float]:
        """Data-driven init: scale each layer's weights so it fires at ``target_rate``.

        Without it, activity fades layer by layer and the output never spikes
        (no surrogate gradient reaches the weights). x: an encoded batch.
        Returns the achieved spike rate per layer.
        """
        rates: dict[str, float] = {}
        h = x
        first = True
        for name, block in self.blocks.items():
            if isinstance(block, SEBlock):
                h = block(h)[0]
                continue
            once = first and self.input_once  # as forward() feeds it: the image at the first step only
            first = False
            run = ((lambda inp: block(inp, self.time_steps, once=once)[0]) if isinstance(block, ConvBlock)
                   else (lambda inp: block(inp)[0]))
            goal = fc_rate if isinstance(block, DenseBlock) else target_rate
            w = block.synapse.weight
            base = w.detach().clone()
            lo, hi = 1e-3, 1e3
            for _ in range(18):  # bisection on log scale
                mid = (lo * hi) ** 0.5
                w.copy_(base * mid)
                rate = float((run(h) > 0).float().mean())
                lo, hi = (mid, hi) if rate < goal else (lo, mid)
            w.copy_(base * (lo * hi) ** 0.5)
            h = run(h)
            rates[name] = float((h > 0).float().mean())
        return rates


def reference_forward(net: Network, x: torch.Tensor) -> torch.Tensor:
    """The same network computed the way lava-dl's SLAYER does it, for tests and benchmarks.

    Layout (N, C, H, W, T) throughout, the image repeated over T, SLAYER's
    conv3d / dense synapses and its CUBA ``dynamics`` and ``spike``. Returns the
    output-class spike counts (N, K); equal to ``net(x).class_counts``.
    """
    t = net.time_steps
    h = x.unsqueeze(-1).expand(*x.shape, t)
    for block in net.blocks.values():
        if isinstance(block, SEBlock):
            h = block(h.movedim(-1, 1))[0].movedim(1, -1)  # the gate maths is layout-free
            continue
        if isinstance(block, DenseBlock):
            h = h.reshape(h.shape[0], -1, t)
        z = block.synapse(h)
        _current, voltage = block.neuron.dynamics(z)
        h = block.neuron.spike(voltage)
    return h.reshape(h.shape[0], net.num_classes, net.population, t).sum(dim=(2, 3))


HELD_CURRENT_DECAY = 1 / 4096  # Lava du = 0: the smallest current decay of Loihi's fixed-point CUBA


def build_model(config: ModelConfig) -> Network:
    """NeurALLNet from its config (see ``lava_allnet.config.MODELS``)."""
    cfg = config
    sizes = cfg.feature_sizes()
    blocks: list[tuple[str, torch.nn.Module]] = []
    thresholds = cfg.layer_thresholds()  # each scaled to its input message and gain

    def neuron(layer: str) -> NeuronConfig:
        n = dataclasses.replace(cfg.neuron, threshold=thresholds[layer])
        # input once: conv1's current holds the image's drive instead of integrating it T times. The
        # least decay Loihi's 12-bit CUBA has is 1/4096 per step (Lava du = 0): the held current loses
        # at most one state unit per step, the same in SLAYER and on the chip
        return dataclasses.replace(n, current_decay=HELD_CURRENT_DECAY) if cfg.input_once and layer == "conv1" else n

    in_ch, bits = cfg.in_channels, cfg.input_bits
    for i, (ch, stride, use_se) in enumerate(zip(cfg.channels, cfg.strides, cfg.se), start=1):
        k = cfg.kernel_size
        blocks.append((f"conv{i}", ConvBlock(in_ch, ch, k, stride, k // 2, neuron(f"conv{i}"), bits, norm=cfg.norm)))
        bits = 0
        if use_se:
            s = sizes[i - 1]
            blocks.append((f"se{i}", SEBlock(ch, max(1, ch // cfg.se_reduction), s, s, cfg.gate_levels)))
            bits = fx.gate_message_bits(cfg.gate_levels)
        in_ch = ch
    features = cfg.channels[-1] * sizes[-1] * sizes[-1]
    blocks.append(("fc", DenseBlock(features, cfg.num_classes * cfg.population, neuron("fc"), bits, norm=cfg.norm)))
    net = Network(
        blocks,
        (cfg.in_channels, cfg.input_size, cfg.input_size),
        cfg.input_bits,
        cfg.time_steps,
        cfg.class_names,
        cfg.population,
        input_once=cfg.input_once,
    )
    net.frontend = FrontEnd.from_json(cfg.frontend)
    net.config = cfg
    return net
