"""Fast, bit-exact fixed-point CPU process models for the Lava simulator.

Drop-in replacements for the stock ``fixed_pt`` models of ``Conv``, ``Dense``,
``Sparse``, ``LIF`` and ``LIFReset`` (lava-nc 0.10).  They keep the stock
port/Var types, the 1-step output buffer and every integer wrap/clamp, and
only change *how* the same integers are computed::

    from lava.magma.core.run_configs import Loihi2SimCfg
    cfg = Loihi2SimCfg(select_tag="fixed_pt",
                       exception_proc_model_map=fast_exception_map())

Exactness argument used throughout: products and sums of integers are exact
in float32 while every partial sum stays below 2**24 in magnitude (2**53 for
float64), whatever order BLAS sums in.  ``sum_f |w_f| * max|x|`` bounds every
partial sum, so each call picks float32, float64, or (beyond 2**53, never the
case for Loihi-sized weights) the stock code path.

Weights are treated as static, exactly as the stock Dense/Sparse models do;
cached matrices are rebuilt after ``Var.set`` (``_set_var``) or when a VarPort
replaces the array object.  torch is deliberately not used: it hangs inside
forked Lava processes.
"""
from __future__ import annotations

import typing as ty

import numpy as np
from scipy.sparse import csr_matrix

from lava.magma.core.model.py.model import AbstractPyProcessModel
from lava.proc.conv import utils as conv_utils
from lava.proc.conv.models import PyConvModelFixed
from lava.proc.conv.process import Conv
from lava.proc.dense.models import PyDenseModelBitAcc
from lava.proc.dense.process import Dense
from lava.proc.lif.models import PyLifModelBitAcc, PyLifResetModelBitAcc
from lava.proc.lif.process import LIF, LIFReset
from lava.proc.sparse.models import PySparseModelBitAcc
from lava.proc.sparse.process import Sparse
from lava.utils.weightutils import (SignMode, clip_weights, determine_sign_mode,
                                    truncate_weights)

__all__ = [
    "ConvPlan",
    "fast_conv",
    "FastPyConvModelFixed",
    "FastPyDenseModelBitAcc",
    "FastPySparseModelBitAcc",
    "FastPyLifModelBitAcc",
    "FastPyLifResetModelBitAcc",
    "fast_exception_map",
]

F32_EXACT = 1 << 24
F64_EXACT = 1 << 53


def _float_dtype(bound: int) -> ty.Optional[type]:
    """Smallest float type in which all partial sums < ``bound`` are exact."""
    if bound < F32_EXACT:
        return np.float32
    if bound < F64_EXACT:
        return np.float64
    return None


def _max_abs(x: np.ndarray) -> int:
    if x.size == 0:
        return 0
    return max(abs(int(x.max())), abs(int(x.min())))


# --------------------------------------------------------------------- Conv
class ConvPlan:
    """Precomputed im2col geometry and weight matrix of one Lava ``Conv``.

    Lava layouts: input (X, Y, C_in), weight (C_out, Kx, Ky, C_in/groups),
    output (X', Y', C_out).  ``conv_scipy`` uses ``convolve2d`` (a true
    convolution), so the kernel is flipped spatially before it becomes the
    (groups, Kx*Ky*C_in/groups, C_out/groups) matrix.
    """

    def __init__(self, weight: np.ndarray, input_shape: ty.Sequence[int],
                 stride: ty.Sequence[int], padding: ty.Sequence[int],
                 dilation: ty.Sequence[int], groups: int) -> None:
        c_out, kx, ky, c_grp = weight.shape
        if not np.issubdtype(weight.dtype, np.integer):
            raise TypeError(f"integer weights expected, got {weight.dtype}")
        self.out_dtype = weight.dtype  # stock casts the float sum to it
        self.groups = int(groups)
        self.in_shape = tuple(int(v) for v in input_shape)
        if self.in_shape[2] != c_grp * self.groups or c_out % self.groups:
            raise ValueError(
                f"channels do not match groups: weight {weight.shape}, "
                f"input {self.in_shape}, groups {groups}")
        self.kernel = (kx, ky)
        self.stride = (int(stride[0]), int(stride[1]))
        self.padding = (int(padding[0]), int(padding[1]))
        self.dilation = (int(dilation[0]), int(dilation[1]))
        x_out, y_out, _ = conv_utils.output_shape(
            self.in_shape, c_out, self.kernel, self.stride, self.padding,
            self.dilation)
        self.out_shape = (int(x_out), int(y_out), c_out)

        k_grp = c_out // self.groups
        w = np.asarray(weight, dtype=np.int64)[:, ::-1, ::-1, :]
        self.w_int = np.ascontiguousarray(
            w.reshape(self.groups, k_grp, kx, ky, c_grp)
             .transpose(0, 2, 3, 4, 1)
             .reshape(self.groups, kx * ky * c_grp, k_grp))
        # Largest L1 norm of a weight column; times max|x| it bounds every
        # partial sum of every output.
        self.w_l1 = int(np.abs(self.w_int).sum(axis=1).max(initial=0))
        self._w_float: ty.Dict[type, np.ndarray] = {}

    def weight_matrix(self, dtype: type) -> np.ndarray:
        if dtype not in self._w_float:
            self._w_float[dtype] = self.w_int.astype(dtype)
        return self._w_float[dtype]

    def _im2col(self, x: np.ndarray, dtype: type) -> np.ndarray:
        """(groups, X'*Y', Kx*Ky*C_grp) patches of ``x`` in ``dtype``."""
        (xi, yi, c), (px, py) = self.in_shape, self.padding
        (kx, ky), (sx, sy), (dx, dy) = self.kernel, self.stride, self.dilation
        xo, yo, _ = self.out_shape
        g = self.groups
        # Zero-padding and the dtype cast in one copy of the (small) input.
        xp = np.zeros((xi + 2 * px, yi + 2 * py, g, c // g), dtype)
        xp[px:px + xi, py:py + yi] = x.reshape(xi, yi, g, c // g)
        cols = np.empty((g, xo, yo, kx, ky, c // g), dtype)
        for i in range(kx):
            for j in range(ky):
                win = xp[i * dx:i * dx + sx * (xo - 1) + 1:sx,
                         j * dy:j * dy + sy * (yo - 1) + 1:sy]
                cols[:, :, :, i, j, :] = win.transpose(2, 0, 1, 3)
        return cols.reshape(g, xo * yo, kx * ky * (c // g))

    def accumulate(self, x: np.ndarray) -> np.ndarray:
        """Exact ``conv_utils.conv(x, weight, ...)``, same dtype and cast.

        ``x`` must already be bool (binary spikes) or integer (graded).
        """
        dtype = _float_dtype(self.w_l1 * (1 if x.dtype == bool else _max_abs(x)))
        if dtype is None:
            raise OverflowError("sums may exceed 2**53; use the stock conv")
        out = np.matmul(self._im2col(x, dtype), self.weight_matrix(dtype))
        out = out.transpose(1, 0, 2).reshape(self.out_shape)
        # float64 -> int exactly like the stock `.astype(weight.dtype)`
        # (out-of-range values included); float32 values are < 2**24.
        return out.astype(self.out_dtype)


def fast_conv(x: np.ndarray, weight: np.ndarray,
              kernel_size: ty.Sequence[int], stride: ty.Sequence[int],
              padding: ty.Sequence[int], dilation: ty.Sequence[int],
              groups: int) -> np.ndarray:
    """Bit-exact stand-in for ``lava.proc.conv.utils.conv`` (int weights).

    Bool input is binary spikes, integer input graded spikes.  One-shot use;
    the process model keeps its ``ConvPlan``.
    """
    del kernel_size  # implied by weight.shape, as in the stock model
    plan = ConvPlan(weight, x.shape, stride, padding, dilation, groups)
    try:
        return plan.accumulate(x)
    except OverflowError:
        return conv_utils.conv(x, weight, plan.kernel, plan.stride,
                               plan.padding, plan.dilation, plan.groups)


def _wrap24(x: np.ndarray) -> np.ndarray:
    """``signed_clamp(x, 24)`` for int32: floor-mod 2**24 is a bit mask."""
    return ((x + (1 << 23)) & 0xFFFFFF) - (1 << 23)


class _CacheMixin(AbstractPyProcessModel):
    """Marks cached derived data stale whenever the runtime sets a Var."""

    _cache_dirty: bool = True

    def _set_var(self) -> None:
        super()._set_var()
        self._cache_dirty = True


class FastPyConvModelFixed(_CacheMixin, PyConvModelFixed):
    """``PyConvModelFixed`` with strided im2col + BLAS instead of
    per-channel-pair full-resolution ``convolve2d``."""

    _plan: ty.Optional[ConvPlan] = None
    _plan_weight: ty.Optional[np.ndarray] = None

    def _get_plan(self) -> ConvPlan:
        if self._cache_dirty or self._plan is None \
                or self._plan_weight is not self.weight:
            self._plan = ConvPlan(self.weight, self.s_in.shape, self.stride,
                                  self.padding, self.dilation, self.groups[0])
            self._plan_weight = self.weight
            self._cache_dirty = False
        return self._plan

    def run_spk(self) -> None:
        self.a_out.send(self.a_buf)
        s_in = self.s_in.recv()
        if self.num_message_bits.item() <= 0:
            s_in = s_in.astype(bool)
        plan = self._get_plan()
        if s_in.dtype == bool or np.issubdtype(s_in.dtype, np.integer):
            try:
                self.a_buf = _wrap24(plan.accumulate(s_in))
                return
            except OverflowError:
                pass
        # Out of the exact range (or float input): the stock computation.
        a_out = conv_utils.conv(s_in, self.weight, self.kernel_size,
                                self.stride, self.padding, self.dilation,
                                self.groups[0])
        self.a_buf = self.clamp_precision(a_out)


# ------------------------------------------------------------ Dense / Sparse
def _stock_weights(model: ty.Any) -> ty.Any:
    """Clip + truncate exactly as the stock Dense/Sparse run_spk does once."""
    num_weight_bits: int = model.proc_params.get("num_weight_bits", 8)
    sign_mode: SignMode = model.proc_params.get("sign_mode") \
        or determine_sign_mode(model.weights)
    weights = clip_weights(model.weights, sign_mode, num_bits=8)
    return truncate_weights(weights, sign_mode, num_weight_bits)


def _apply_weight_exp(a_accum: np.ndarray, weight_exp: int) -> np.ndarray:
    return (np.left_shift(a_accum, weight_exp) if weight_exp > 0
            else np.right_shift(a_accum, -weight_exp))


class FastPyDenseModelBitAcc(_CacheMixin, PyDenseModelBitAcc):
    """``PyDenseModelBitAcc`` with a float BLAS gemv instead of boolean
    column gathering (binary) / numpy's non-BLAS integer dot (graded).

    Result dtypes follow the stock code: binary sums are ``int64`` (numpy's
    ``sum`` of int32), graded dots have ``result_type(weights, s_in)`` and
    wrap like numpy's integer dot; the weight_exp shift is applied after.
    """

    _w_src: ty.Optional[np.ndarray] = None

    def _matrices(self) -> ty.Tuple[int, ty.Dict[type, np.ndarray]]:
        if self._cache_dirty or self._w_src is not self.weights:
            w = np.asarray(self.weights)
            self._w_l1 = int(np.abs(w.astype(np.int64)).sum(axis=1).max(initial=0))
            self._w_float: ty.Dict[type, np.ndarray] = {}
            self._sum_dtype = np.zeros((1, 0), w.dtype).sum(axis=1).dtype
            self._w_src = self.weights
            self._cache_dirty = False
        return self._w_l1, self._w_float

    def _dot(self, x: np.ndarray, max_x: int) -> ty.Optional[np.ndarray]:
        """Exact int64 ``weights @ x``, or None if float is not exact."""
        w_l1, mats = self._matrices()
        dtype = _float_dtype(w_l1 * max_x)
        if dtype is None:
            return None
        if dtype not in mats:
            mats[dtype] = np.asarray(self.weights, dtype=dtype)
        return mats[dtype].dot(x.astype(dtype)).astype(np.int64)

    def run_spk(self) -> None:
        self.weight_exp = self.proc_params.get("weight_exp", 0)
        if not self.weights_set:
            self.weights = _stock_weights(self)
            self.weights_set = True
        self.a_out.send(self.a_buff)
        a_accum = None
        if self.num_message_bits.item() > 0:
            s_in = self.s_in.recv()
            if np.issubdtype(s_in.dtype, np.integer) or s_in.dtype == bool:
                acc = self._dot(s_in, _max_abs(s_in))
                if acc is not None:
                    a_accum = acc.astype(
                        np.result_type(self.weights.dtype, s_in.dtype))
            if a_accum is None:
                a_accum = self.weights.dot(s_in)
        else:
            s_in = self.s_in.recv().astype(bool)
            acc = self._dot(s_in, 1)
            a_accum = (acc.astype(self._sum_dtype) if acc is not None
                       else self.weights[:, s_in].sum(axis=1))
        self.a_buff = _apply_weight_exp(a_accum, self.weight_exp)


class FastPySparseModelBitAcc(_CacheMixin, PySparseModelBitAcc):
    """``PySparseModelBitAcc`` with an int64 CSR mat-vec (exact modulo 2**64,
    like the stock int sums) instead of boolean column slicing of the CSR."""

    _w_src: ty.Optional[csr_matrix] = None

    def _matrix(self) -> csr_matrix:
        if self._cache_dirty or self._w_src is not self.weights:
            self._w64 = csr_matrix(self.weights, dtype=np.int64)
            self._sum_dtype = csr_matrix((1, 1), dtype=self.weights.dtype) \
                .sum(axis=1).A1.dtype
            self._w_src = self.weights
            self._cache_dirty = False
        return self._w64

    def run_spk(self) -> None:
        self.weight_exp = self.proc_params.get("weight_exp", 0)
        if not self.weights_set:
            self.weights = _stock_weights(self)
            self.weights_set = True
        self.a_out.send(self.a_buff)
        if self.num_message_bits.item() > 0:
            s_in = self.s_in.recv()
            if np.issubdtype(s_in.dtype, np.integer) or s_in.dtype == bool:
                a_accum = (self._matrix() @ s_in.astype(np.int64)).astype(
                    np.result_type(self.weights.dtype, s_in.dtype))
            else:
                a_accum = self.weights.dot(s_in)
        else:
            s_in = self.s_in.recv().astype(bool)
            a_accum = (self._matrix() @ s_in.astype(np.int64)).astype(
                self._sum_dtype)
        self.a_buff = _apply_weight_exp(a_accum, self.weight_exp)


# ---------------------------------------------------------------- LIF family
def _decay(x: np.ndarray, factor: int, shift: int) -> np.ndarray:
    """int32 ``sign(p) * (|p| >> shift)`` with ``p = int64(x) * factor``.

    For 0 <= factor <= 2**shift, |p| < 2**44 fits a float64 mantissa, so
    p / 2**shift is exact, stays in int32 range, and the float->int cast
    truncates toward zero like the stock sign/abs/shift.
    """
    if factor == 1 << shift:
        return x.astype(np.int32)
    if factor == 0:
        return np.zeros(x.shape, np.int32)
    if 0 < factor < 1 << shift:
        return (x * (factor / (1 << shift))).astype(np.int32)
    p = np.int64(x) * factor  # out-of-spec decay: stock formula verbatim
    return np.int32(np.sign(p) * np.right_shift(np.abs(p), shift))


class _FastLifMixin:
    """Exact, cheaper ``scale_bias`` / ``subthr_dynamics`` / ``reset_voltage``
    for the fixed-point LIF models (stock recomputes the bias with np.where
    every step and runs ~20 full-size int64 passes).  Mixed in before an
    ``AbstractPyLifModelFixed`` subclass; the stock ``run_spk`` calls these."""

    _bias_src: ty.Optional[ty.Tuple[np.ndarray, np.ndarray]] = None
    _bias_zero: bool = False

    def scale_bias(self) -> None:
        # Stock recomputes every step so that Var changes are seen; recompute
        # only after Var.set / a VarPort replacing the arrays.
        if (self._cache_dirty or self._bias_src is None
                or self._bias_src[0] is not self.bias_mant
                or self._bias_src[1] is not self.bias_exp):
            super().scale_bias()
            self._bias_src = (self.bias_mant, self.bias_exp)
            self._bias_zero = not np.any(self.effective_bias)
            self._cache_dirty = False

    def subthr_dynamics(self, activation_in: np.ndarray) -> None:
        m = self.max_uv_val
        curr = _decay(self.u, int(self.decay_unity - (self.du + self.ds_offset)),
                      self.decay_shift)
        curr += np.left_shift(activation_in, self.act_shift)
        if curr.size and (curr.max() > m or curr.min() <= -m):
            # Stock's one-step (not modular) 24-bit wrap, verbatim.
            wrapped = np.where(curr > m, curr - 2 * m, curr)
            curr = np.where(wrapped <= -m, curr + 2 * m, wrapped)
        self.u[:] = curr
        volt = _decay(self.v, int(self.decay_unity - (self.dv + self.dm_offset)),
                      self.decay_shift)
        volt += self.u
        if not self._bias_zero:
            volt += self.effective_bias
        np.clip(volt, -np.int32(m) + 1, np.int32(m) - 1, out=self.v)

    def reset_voltage(self, spike_vector: np.ndarray) -> None:
        np.copyto(self.v, 0, where=spike_vector)


class FastPyLifModelBitAcc(_FastLifMixin, _CacheMixin, PyLifModelBitAcc):
    """``PyLifModelBitAcc`` with the fast exact sub-threshold dynamics."""


class FastPyLifResetModelBitAcc(_FastLifMixin, _CacheMixin,
                                PyLifResetModelBitAcc):
    """``PyLifResetModelBitAcc`` with the fast exact sub-threshold dynamics."""


def fast_exception_map() -> ty.Dict[type, type]:
    """``exception_proc_model_map`` for ``Loihi2SimCfg(select_tag='fixed_pt')``.

    Lava matches on the exact process class (``type(proc)``), so subclasses
    of these processes keep their stock models.
    """
    return {
        Conv: FastPyConvModelFixed,
        Dense: FastPyDenseModelBitAcc,
        Sparse: FastPySparseModelBitAcc,
        LIF: FastPyLifModelBitAcc,
        LIFReset: FastPyLifResetModelBitAcc,
    }


# ------------------------------------------------------- floating point (sim-float)
# The floating-point simulator runs the same graph in real units without integer
# rounding. Lava ships no floating_pt models for GradedVec, GradedReluVec and
# ProdNeuron, and its float Conv is the slow scipy loop; these fill the gap.
from lava.magma.core.decorator import implements, requires, tag  # noqa: E402
from lava.magma.core.model.py.model import PyLoihiProcessModel  # noqa: E402
from lava.magma.core.model.py.ports import PyInPort, PyOutPort  # noqa: E402
from lava.magma.core.model.py.type import LavaPyType  # noqa: E402
from lava.magma.core.resources import CPU  # noqa: E402
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol  # noqa: E402
from lava.proc.conv.models import PyConvModelFloat  # noqa: E402
from lava.proc.graded.process import GradedReluVec, GradedVec  # noqa: E402
from lava.proc.prodneuron.process import ProdNeuron  # noqa: E402


class _FloatConvPlan(ConvPlan):
    """ConvPlan geometry with real-valued weights (no exactness bound needed)."""

    def __init__(self, weight: np.ndarray, input_shape, stride, padding, dilation, groups) -> None:
        super().__init__(np.zeros(weight.shape, np.int32), input_shape, stride, padding, dilation, groups)
        c_out, kx, ky, c_grp = weight.shape
        w = np.asarray(weight, dtype=np.float64)[:, ::-1, ::-1, :]
        self.w_real = np.ascontiguousarray(
            w.reshape(self.groups, c_out // self.groups, kx, ky, c_grp).transpose(0, 2, 3, 4, 1)
             .reshape(self.groups, kx * ky * c_grp, c_out // self.groups))

    def accumulate_real(self, x: np.ndarray) -> np.ndarray:
        out = np.matmul(self._im2col(x, np.float64), self.w_real)
        return out.transpose(1, 0, 2).reshape(self.out_shape)


class FastPyConvModelFloat(_CacheMixin, PyConvModelFloat):
    """``PyConvModelFloat`` via im2col + BLAS (same sums up to float rounding order)."""

    _plan: ty.Optional[_FloatConvPlan] = None

    def run_spk(self) -> None:
        self.a_out.send(self.a_buf)
        s_in = self.s_in.recv()
        if self.num_message_bits.item() <= 0:
            s_in = s_in.astype(bool)
        if self._cache_dirty or self._plan is None:
            self._plan = _FloatConvPlan(self.weight, self.s_in.shape, self.stride, self.padding,
                                        self.dilation, self.groups[0])
            self._cache_dirty = False
        self.a_buf = self._plan.accumulate_real(s_in)


class _GradedFloatBase(PyLoihiProcessModel):
    """v = a_in; s_out = v where it passes the threshold test, in floating point."""

    a_in = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out = LavaPyType(PyOutPort.VEC_DENSE, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    vth: np.ndarray = LavaPyType(np.ndarray, float)
    exp: np.ndarray = LavaPyType(np.ndarray, float)

    def passes(self, v: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def run_spk(self) -> None:
        v = self.a_in.recv()
        self.s_out.send(v * self.passes(v))


@implements(proc=GradedVec, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyGradedVecModelFloat(_GradedFloatBase):
    """GradedVec: passes where |v| > vth."""

    def passes(self, v: np.ndarray) -> np.ndarray:
        return np.abs(v) > self.vth


@implements(proc=GradedReluVec, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyGradedReluVecModelFloat(_GradedFloatBase):
    """GradedReluVec: passes where v > vth."""

    def passes(self, v: np.ndarray) -> np.ndarray:
        return v > self.vth


@implements(proc=ProdNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyProdNeuronModelFloat(PyLoihiProcessModel):
    """v = a_in1 * a_in2 / 2**exp; s_out = v * (|v| > vth) in floating point."""

    a_in1 = LavaPyType(PyInPort.VEC_DENSE, float)
    a_in2 = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out = LavaPyType(PyOutPort.VEC_DENSE, float)
    v: np.ndarray = LavaPyType(np.ndarray, float)
    vth: np.ndarray = LavaPyType(np.ndarray, float)
    exp: np.ndarray = LavaPyType(np.ndarray, float)

    def run_spk(self) -> None:
        v = self.a_in1.recv() * self.a_in2.recv() / 2.0 ** float(self.exp[0])
        self.s_out.send(v * (np.abs(v) > self.vth))


def float_exception_map() -> ty.Dict[type, type]:
    """``exception_proc_model_map`` for ``Loihi2SimCfg(select_tag='floating_pt')``."""
    return {
        Conv: FastPyConvModelFloat,
        GradedVec: PyGradedVecModelFloat,
        GradedReluVec: PyGradedReluVecModelFloat,
        ProdNeuron: PyProdNeuronModelFloat,
    }
