"""The integer rules that make the torch reference and Lava agree, in one place.

Every number that crosses from the torch model to the Lava graph (weight
mantissas, threshold mantissas, 12-bit decays, shift exponents, the SE gate
quantisation) is computed here, and both ``lava_allnet.model`` (training and
the torch backend) and ``netx`` (export and the Lava builder) call these
functions. A second copy of any rule is a future mismatch.

Conventions (lava-dl SLAYER CUBA, verified bit-exact with Lava fixed_pt):
- weights: mantissa = w * 64, even integers in [-256, 254] (``quantize_8bit``;
  even because a mixed-sign Loihi synapse drops the lowest weight bit);
- neuron states u, v: Loihi units = SLAYER value * 4096 (input << 6);
- threshold: mantissa = int(threshold * 64), spike when v > mantissa << 6;
- decays: 12-bit integers, ``du = iDecay - 1`` because Lava adds ``ds_offset=1``.

A layer's *input scale* says which integer message stands for "1.0": binary
spikes are 1, graded image pixels are ``2**input_bits`` and SE-gated spikes are
``gate_levels``. Conv synapses cannot rescale (Lava's Conv ignores
``weight_exp``), so the receiving neuron's threshold is multiplied by the
input scale instead; weights keep their normal range and resolution. A layer's
integer *gain* (``ModelConfig.threshold_gains``) multiplies its threshold too:
the same function with weights, bias and states g times larger, i.e. a weight
grid g times finer relative to the threshold.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

WEIGHT_SCALE = 64  # SLAYER CUBA w_scale
STATE_SCALE = 1 << 12  # SLAYER CUBA s_scale = w_scale * 64
DECAY_BITS = 12
WEIGHT_MIN = -256
WEIGHT_MAX = 254
STATE_BITS = 24  # Loihi u, v registers
VTH_MAX = (1 << 17) - 1  # Lava LIF vth is unsigned 17-bit
MAX_WEIGHT_EXP = 7  # Loihi synapse weight exponent range is [-8, 7]


class _RoundSTE(torch.autograd.Function):
    """round(x / step) * step with a straight-through gradient (SLAYER's quantize)."""

    @staticmethod
    def forward(ctx, x, step):  # type: ignore[override]
        return torch.round(x / step) * step

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None


class _FloorSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return torch.floor(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """floor with a straight-through gradient (Lava's right shift of a sum)."""
    return _FloorSTE.apply(x)


def quantize_weight(w: torch.Tensor) -> torch.Tensor:
    """SLAYER ``quantize_8bit`` for w_scale 64: weights on the 2/64 grid."""
    return _RoundSTE.apply(w, 2 / WEIGHT_SCALE).clamp(
        WEIGHT_MIN / WEIGHT_SCALE, WEIGHT_MAX / WEIGHT_SCALE
    )


def weight_mantissa(w: torch.Tensor) -> np.ndarray:
    """Integer synaptic weights as Lava / Loihi receive them."""
    m = torch.round(quantize_weight(w.detach().float()) * WEIGHT_SCALE)
    return m.cpu().numpy().astype(np.int32)


def weight_from_mantissa(m: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`weight_mantissa` (exact: mantissas are on the grid)."""
    return torch.as_tensor(np.asarray(m, dtype=np.float32) / WEIGHT_SCALE)


def threshold_mantissa(threshold: float) -> int:
    """SLAYER's ``v_th_mant``: int(threshold * 64)."""
    mant = int(threshold * WEIGHT_SCALE)
    if not 0 < mant <= VTH_MAX:
        raise ValueError(
            f"threshold {threshold} gives mantissa {mant}, outside Lava's 17-bit vth range"
        )
    return mant


def decay_int(decay: float) -> int:
    """A decay fraction as SLAYER quantises it (round(decay * 4096))."""
    return int(round(decay * (1 << DECAY_BITS)))


def lava_lif_params(i_decay: int, v_decay: int, vth_mant: int) -> dict:
    """Lava LIF fixed-point arguments for a SLAYER CUBA neuron."""
    if not 1 <= i_decay <= 4096 or not 0 <= v_decay <= 4095:
        raise ValueError(f"decays out of range: iDecay={i_decay}, vDecay={v_decay}")
    return {"du": int(i_decay) - 1, "dv": int(v_decay), "vth": int(vth_mant), "bias_exp": BIAS_EXP}


# Neuron bias (mean-only batch norm): Lava LIF adds bias_mant << 6 to v every step,
# i.e. bias_mant / 64 in SLAYER units; 13-bit signed mantissa (NetX's bias_exp is 6).
BIAS_EXP = 6
BIAS_MIN, BIAS_MAX = -4096, 4095


def quantize_norm_mean(mean: torch.Tensor, descale: bool = False) -> torch.Tensor:
    """The running mean a mean-only batch norm subtracts, on the bias grid (STE).

    Subtracting m from the current in SLAYER adds -m * 4096 to v, which Lava
    does exactly with bias_mant = -m * 64 and bias_exp = 6.
    """
    step = 1.0 / (1 << BIAS_EXP)
    q = _RoundSTE.apply(mean, step).clamp(-BIAS_MAX * step, -BIAS_MIN * step)
    return q * (1 << BIAS_EXP) if descale else q


def bias_mantissa_from_mean(mean: torch.Tensor) -> np.ndarray:
    return (-quantize_norm_mean(mean.detach().float(), descale=True)).round().cpu().numpy().astype(np.int32)


def mean_from_bias_mantissa(mant: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(-np.asarray(mant, dtype=np.float32) / (1 << BIAS_EXP))


def scaled_threshold(threshold: float, input_scale: int, gain: int = 1) -> float:
    """Threshold of a layer whose "1.0" input message is ``input_scale``, at an integer gain."""
    return threshold * input_scale * gain


# ---------------------------------------------------------------- input encoding

def encode_pixels(images_uint8: np.ndarray, input_bits: int) -> np.ndarray:
    """RGB uint8 pixels → graded input messages (0 .. 2**input_bits - 1).

    A right shift, the one rounding rule both backends share.
    """
    if images_uint8.dtype != np.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    if not 1 <= input_bits <= 8:
        raise ValueError(f"input_bits must be in 1..8, got {input_bits}")
    return (images_uint8 >> (8 - input_bits)).astype(np.int32)


def encode_pixels_torch(images_uint8: torch.Tensor, input_bits: int) -> torch.Tensor:
    """Torch twin of :func:`encode_pixels` (float32 holding exact integers)."""
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images_uint8.dtype}")
    return torch.bitwise_right_shift(images_uint8, 8 - input_bits).float()


# ------------------------------------------------------------------- SE gating

@dataclass(frozen=True)
class SEFixedPoint:
    """Integer constants of one squeeze-and-excitation gate.

    Per time step t and channel c, for binary spikes s[c, y, x, t]:
      count[c]  = sum over positions of s                         (squeeze)
      a1[j]     = relu(floor(sum_c W1[j,c] count[c] / 2**e1) + (B1[j] << eb1))
      z2[c]     = floor(sum_j W2[c,j] a1[j] / 2**e2) + (B2[c] << eb2)
      gate[c]   = clamp(z2[c], 0, G)
      out       = s * gate                                          (scale)
    W1, W2, B1, B2 are even 8-bit mantissas. ``a1`` has ``k1`` fractional bits
    and ``gate`` is in units of 1/G, so with w = W/64 and the spatial mean
    m = count / 2**p the real-valued computation is
    gate = clamp(w2 relu(w1 m + b1) + b2, 0, 1).
    In Lava, e1/e2/eb1/eb2 are Dense ``weight_exp`` shifts and the clamp is
    relu(z2) - relu(z2 - G) (see ``netx.build``).
    """

    channels: int
    hidden: int
    height: int
    width: int
    gate_levels: int = 64

    @property
    def pool_bits(self) -> int:  # p: the squeeze divides by 2**p (= H*W when a power of 2)
        return max(0, round(math.log2(self.height * self.width)))

    @property
    def gate_bits(self) -> int:
        g = int(round(math.log2(self.gate_levels)))
        if 1 << g != self.gate_levels:
            raise ValueError(f"gate_levels must be a power of two, got {self.gate_levels}")
        return g

    @property
    def total_shift(self) -> int:  # e1 + e2 = 6 + p + 6 - g
        return 12 + self.pool_bits - self.gate_bits

    @property
    def squeeze_exp(self) -> int:  # e1
        return (self.total_shift + 1) // 2

    @property
    def excite_exp(self) -> int:  # e2
        return self.total_shift - self.squeeze_exp

    @property
    def hidden_bits(self) -> int:  # k1: fractional bits of a1
        return 6 + self.pool_bits - self.squeeze_exp

    @property
    def bias1_exp(self) -> int:  # eb1: B1 in steps of 2/64 of a real unit where possible
        return max(0, self.hidden_bits - 6)

    @property
    def bias2_exp(self) -> int:  # eb2
        return max(0, self.gate_bits - 6)

    def validate(self) -> None:
        if self.squeeze_exp < 0 or self.excite_exp < 0 or self.hidden_bits < 0:
            raise ValueError(f"SE on a {self.height}x{self.width} map is too small to quantise")

    # bias mantissas: B2 - (G >> eb2) must stay a valid 8-bit mantissa (upper clamp row)
    def bias2_limits(self) -> tuple[int, int]:
        return WEIGHT_MIN + (self.gate_levels >> self.bias2_exp), WEIGHT_MAX

    def bias_mantissa(self, b: torch.Tensor, which: int) -> torch.Tensor:
        """Real bias → even integer mantissa (straight-through), as a float tensor."""
        if which == 1:
            unit = 2 ** (self.hidden_bits - self.bias1_exp)
            lo, hi = WEIGHT_MIN, WEIGHT_MAX
        else:
            unit = 2 ** (self.gate_bits - self.bias2_exp)
            lo, hi = self.bias2_limits()
        return _RoundSTE.apply(b * unit, 2.0).clamp(lo, hi)

    def forward(
        self,
        spikes: torch.Tensor,
        w1: torch.Tensor,
        b1: torch.Tensor,
        w2: torch.Tensor,
        b2: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The gate in exact integer arithmetic (float64), differentiable by STE.

        spikes: (N, T, C, H, W) binary, time-major. Returns (gated spikes,
        a1 (N, T, J), the two ReLU rows (N, T, 2C) that Lava's clamp uses,
        gate (N, T, C)).
        """
        count = spikes.double().sum(dim=(3, 4))  # (N, T, C)
        m1 = (quantize_weight(w1) * WEIGHT_SCALE).double()
        m2 = (quantize_weight(w2) * WEIGHT_SCALE).double()
        bias1 = self.bias_mantissa(b1, 1).double() * (2 ** self.bias1_exp)
        bias2 = self.bias_mantissa(b2, 2).double() * (2 ** self.bias2_exp)
        a1 = torch.relu(floor_ste(count @ m1.t() / 2 ** self.squeeze_exp) + bias1)
        z2 = floor_ste(a1 @ m2.t() / 2 ** self.excite_exp) + bias2
        upper = torch.relu(z2 - self.gate_levels)
        lower = torch.relu(z2)
        gate = lower - upper  # == clamp(z2, 0, G), exactly as the Lava graph computes it
        out = spikes * gate.to(spikes.dtype)[..., None, None]
        return out, a1, torch.cat([lower, upper], dim=2), gate


def gate_message_bits(gate_levels: int) -> int:
    """Message width that carries a gated spike 0..G."""
    return int(gate_levels).bit_length()


def check_state_range(current: torch.Tensor) -> int:
    """Number of current values outside Loihi's 24-bit u register, where Lava wraps (should be 0).

    SLAYER does not wrap; Lava and Loihi do, and a wrapped current changes the
    spikes. (v saturates instead; a deeply negative v that saturates usually
    changes no spike, so it is penalised in training but not counted here.)
    """
    limit = 1 << (STATE_BITS - 1)
    return int(((current * STATE_SCALE).abs() >= limit).sum().item())


# Training keeps u and v within this share of the 24-bit range (margin for unseen images).
STATE_MARGIN = 0.5


def state_range_penalty(current: torch.Tensor, voltage: torch.Tensor) -> torch.Tensor:
    """Squared hinge on |u|, |v| beyond STATE_MARGIN of the 24-bit range, summed, per image.

    Measured: without it a model trained on the real smears drove conv5's current
    far past 2**23 (gated graded input is up to 64x a spike) and lost 17 points of
    accuracy on Lava, which wraps u and saturates v.
    """
    from lava_allnet.kernels.fast_cuba import range_penalty  # fused: six torch passes had doubled a training step

    scale = STATE_SCALE / float(1 << (STATE_BITS - 1))
    excess = range_penalty(current, scale, STATE_MARGIN) + range_penalty(voltage, scale, STATE_MARGIN)
    return excess / current.shape[0]
