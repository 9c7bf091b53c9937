"""Fast CPU paths for lava-dl SLAYER CUBA neurons, bit-identical to stock.

lava-dl 0.6's CPU path of ``leaky_integrator.dynamics`` (used twice per CUBA
neuron: current, then voltage with threshold and reset) runs a Python loop of
~10 small torch ops per time step, which dominates CPU run time of CUBA nets.
:func:`install` routes CPU calls to a C++ kernel (``csrc/cuba_dynamics.cpp``,
JIT-compiled on first use into a per-user cache, SIMD over neurons, parallel
with ``at::parallel_for``). It also replaces, for CPU float32 tensors:

* ``Spike.forward``: ``(voltage >= threshold).to(float)`` in one pass;
* ``Spike.backward``: the seven elementwise passes of ``_spike_backward``
  fused into three (``torch.exp`` itself is still torch's, so the result is
  the same bits);
* ``utils.time.shift`` by a scalar (the block's one-step axon delay): one
  pass instead of two ``zeros_like`` and a strided copy.

Every replacement performs the same float32 / int64 operations, in the same
order, as the torch ops it replaces, so outputs, spikes and gradients are
bit-identical to stock (see tests/test_fast_cuba.py). CUDA tensors,
``debug=True`` and anything unusual (other dtypes, tensor thresholds, graded
spikes, shapes stock would reject) go to the stock code unchanged. If the
extension cannot be compiled, one ``RuntimeWarning`` is issued and the stock
code runs.

Usage::

    from lava_allnet.kernels import fast_cuba
    fast_cuba.install()     # idempotent
    ...
    fast_cuba.uninstall()   # back to stock

Separately, :func:`tune_malloc` stops glibc from unmapping large freed
tensors, which matters as much as the kernels at batch 16 (process-wide,
opt-in).

Time-major API (no install needed): :func:`li_dynamics_tm` and
:func:`spike_tm` run the same dynamics and spike function directly on
(N, T, *S) tensors, the layout of conv2d over (N*T, C, H, W) frames, so a
model need not permute to SLAYER's time-last (N, *S, T) and back. Results are
bit-identical to stock on the permuted tensor. A slayer ``cuba.Neuron``
``neuron`` maps to them as::

    thr = neuron.threshold + neuron.threshold_eps
    current = li_dynamics_tm(z, quantize(neuron.current_decay), neuron.s_scale)
    # (neuron.norm, if any, goes here, on the current)
    voltage = li_dynamics_tm(current, quantize(neuron.voltage_decay), neuron.s_scale, thr)
    spikes = spike_tm(voltage, thr, neuron.tau_rho * cuba.TAU_RHO_MULT,
                      neuron.scale_rho * cuba.SCALE_RHO_MULT)

(``quantize`` from ``lava.lib.dl.slayer.utils``; zero initial state only, i.e.
no ``persistent_state``; non-graded spikes only.)
"""
from __future__ import annotations

import math
import os
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from lava_allnet._lava import slayer as _quiet_slayer

_quiet_slayer()  # the first slayer import prints to stdout; keep --json output clean
from lava.lib.dl.slayer.neuron.dynamics import leaky_integrator as _li
from lava.lib.dl.slayer.spike.spike import Spike as _Spike

# utils/time/__init__.py rebinds the name `shift` to the function, so the
# module is only reachable through sys.modules.
_shift_mod = sys.modules["lava.lib.dl.slayer.utils.time.shift"]

__all__ = [
    "install", "uninstall", "is_installed", "available", "build_error", "extension_dir", "tune_malloc",
    "li_dynamics_tm", "spike_tm",
]

_CSRC = Path(__file__).resolve().parent / "csrc"
# neuron dynamics and spikes; event-driven convolutions (sparse spike input)
_SOURCES = (_CSRC / "cuba_dynamics.cpp", _CSRC / "sparse_conv.cpp")
_EXT_NAME = "lava_allnet_cuba"
# -ffp-contract=off: float32 `a * b + c` must stay a rounded multiply and a
# rounded add (as in torch), never a fused multiply-add.
_CFLAGS = ["-O3", "-ffp-contract=off", "-fopenmp"]
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1
# Reset modes of li_fwd (see cuba_dynamics.cpp).
_NO_RESET, _FLOAT_THRESHOLD, _INT_THRESHOLD = 0, 1, 2

_lock = threading.Lock()
_ops: Any = None
_load_attempted = False
_load_error: str | None = None
# What install() replaced (restored by uninstall() and used for fallbacks);
# before install(), fallbacks use the functions found at import.
_saved: dict[str, Any] = {}
_ORIGINAL: dict[str, Any] = {
    "dynamics": _li.dynamics,
    "spike_forward": _Spike.__dict__["forward"].__func__,
    "spike_backward": _Spike.__dict__["backward"].__func__,
    "shift_group": _shift_mod._shift_group,
}


def _stock(name: str) -> Any:
    return _saved.get(name) or _ORIGINAL[name]


# --------------------------------------------------------------------------
# extension loading
# --------------------------------------------------------------------------
def extension_dir() -> Path:
    """Per-user build/cache directory of the extension (never the repo)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    version = torch.__version__.replace("+", "_")
    return base / "lava-allnet" / "torch_extensions" / version


def _load_ops() -> Any:
    """The compiled ops namespace, compiling on first call; None if that fails."""
    global _ops, _load_attempted
    if _load_attempted:
        return _ops
    with _lock:
        if _load_attempted:
            return _ops
        try:
            from torch.utils.cpp_extension import load

            build_dir = extension_dir()
            build_dir.mkdir(parents=True, exist_ok=True)
            # Not a Python module: the library registers torch.ops.<_EXT_NAME>
            # (no pybind11 / torch/extension.h: a much faster compile).
            load(
                name=_EXT_NAME,
                sources=[str(p) for p in _SOURCES],
                extra_cflags=_CFLAGS,
                extra_ldflags=["-fopenmp"],
                build_directory=str(build_dir),
                is_python_module=False,
                verbose=False,
            )
            _ops = getattr(torch.ops, _EXT_NAME)
        except Exception as exc:  # no compiler, broken headers, ...
            _ops = None
            global _load_error
            _load_error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc!r}"
            warnings.warn(
                f"lava_allnet.kernels.fast_cuba: could not build the C++ CUBA extension "
                f"({type(exc).__name__}: {exc}); using lava-dl's stock (slow) "
                f"CPU code.",
                RuntimeWarning,
                stacklevel=3,
            )
        _load_attempted = True
    return _ops


def available() -> bool:
    """Whether the C++ extension is compiled and loaded (compiles if needed)."""
    return _load_ops() is not None


def build_error() -> str | None:
    """Why the extension could not be built (the last line of the error), or None."""
    _load_ops()
    return _load_error


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------
def _is_cpu_f32(x: Any) -> bool:
    return (
        isinstance(x, torch.Tensor)
        and x.dtype is torch.float32
        and x.is_cpu
        and x.dim() >= 1
        and x.numel() > 0
    )


def _trailing_decay(decay: torch.Tensor, shape: torch.Size) -> bool:
    """Whether torch broadcasts ``decay`` against ``shape`` as decay[m % D].

    That is a 1-D decay of length 1, or of length shape[-1] (stock multiplies
    the [N, C] state by a per-channel [C] decay with trailing-dim broadcast).
    """
    return decay.dim() == 1 and (
        decay.shape[0] == 1 or (len(shape) > 0 and decay.shape[0] == shape[-1])
    )


def _flat_decay(decay: torch.Tensor, shape: torch.Size, neurons: int) -> torch.Tensor:
    """Decay as the 1-D layout the kernels index with ``m % D``."""
    if decay.numel() == 1:
        return decay.reshape(1)
    if _trailing_decay(decay, shape):
        return decay.contiguous()
    return decay.expand(shape).reshape(neurons).contiguous()


def _match_layout(result: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Give ``result`` (contiguous) the strides stock's ``zeros_like(like)`` has.

    Values are the same either way; matching the layout keeps later reductions
    (e.g. the grad_decay sums) in exactly stock's summation order.
    """
    if like.is_contiguous():
        return result
    return torch.empty_like(like).copy_(result)


def _scalars_ok(threshold: Any, w_scale: Any) -> bool:
    """Whether threshold and w_scale are Python scalars the kernels take as is."""
    if type(w_scale) is not int or not _INT64_MIN <= w_scale <= _INT64_MAX:
        return False
    if type(threshold) not in (int, float):
        return False  # tensor thresholds etc.: leave to stock
    scaled = threshold * w_scale
    return not (isinstance(scaled, int) and not _INT64_MIN <= scaled <= _INT64_MAX)


def _li_fast_path_ok(
    input: Any, decay: Any, state: Any, threshold: Any, w_scale: Any
) -> bool:
    """Whether the C++ leaky integrator reproduces stock for these arguments."""
    if not (
        _is_cpu_f32(input)
        and _is_cpu_f32(decay)  # float32 decay: the backward math is float32
        and isinstance(state, torch.Tensor)
        and state.is_cpu
    ):
        return False
    if not _scalars_ok(threshold, w_scale):
        return False
    shape = input.shape[:-1]
    if state.shape == shape and _trailing_decay(decay, shape):
        return True  # the usual case, skip the general broadcast check
    try:
        return torch.broadcast_shapes(state.shape, decay.shape, shape) == shape
    except RuntimeError:
        return False  # stock raises its own error


# --------------------------------------------------------------------------
# leaky integrator
# --------------------------------------------------------------------------
def _reset_mode(threshold: float | int, w_scale: int) -> tuple[int, float, int]:
    """(mode, float threshold, int threshold) of li_fwd for stock's arguments."""
    threshold = threshold * w_scale  # stock: `threshold *= w_scale`
    if threshold > 0:
        mode = _INT_THRESHOLD if isinstance(threshold, int) else _FLOAT_THRESHOLD
    else:
        mode = _NO_RESET
    thr_f = float(threshold) if mode == _FLOAT_THRESHOLD else 0.0
    thr_i = int(threshold) if mode == _INT_THRESHOLD else 0
    return mode, thr_f, thr_i


def _fast_li_dynamics_fwd(
    input: torch.Tensor,
    decay: torch.Tensor,
    state: torch.Tensor,
    threshold: float | int,
    w_scale: int,
) -> torch.Tensor:
    """``_li_dynamics_fwd(..., dtype=torch.int64)`` with the loop in C++."""
    mode, thr_f, thr_i = _reset_mode(threshold, w_scale)

    shape = input.shape[:-1]
    if (
        input.is_contiguous()
        and state.dtype == torch.float32
        and state.shape == shape
        and state.is_contiguous()
        and _trailing_decay(decay, shape)
    ):
        # Common case: the kernel does stock's `(state * w_scale).to(int64)`
        # and `4096 - decay.to(int64)` itself (same float32/int64 ops).
        return _ops.li_fwd(input, state, decay.detach(), w_scale, mode, thr_f, thr_i)

    # General case: stock's own torch ops for the set-up, broadcast by hand.
    output_old = (state * w_scale).clone().detach().to(torch.int64)
    decay_int = (1 << 12) - decay.clone().detach().to(torch.int64)
    neurons = math.prod(shape)
    output = _ops.li_fwd(
        input.contiguous(),
        output_old.expand(shape).reshape(neurons).contiguous(),
        _flat_decay(decay_int, shape, neurons),
        w_scale,
        mode,
        thr_f,
        thr_i,
    )
    return _match_layout(output, input)


def _fast_li_dynamics_bwd(
    grad_output: torch.Tensor,
    output: torch.Tensor,
    decay: torch.Tensor,
    need_grad_decay: bool,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``_li_dynamics_bwd`` with the reversed-time recursion in C++."""
    shape = grad_output.shape[:-1]
    decay = decay.detach()
    if grad_output.is_contiguous() and _trailing_decay(decay, shape):
        grad_input = _ops.li_bwd(grad_output, decay)
    else:
        neurons = math.prod(shape)
        grad_input = _ops.li_bwd(
            grad_output.contiguous(), _flat_decay(decay, shape, neurons)
        )
        grad_input = _match_layout(grad_input, grad_output)
    if not need_grad_decay:
        return grad_input, None  # autograd would discard it anyway

    # Verbatim from stock (the kernel applied `1 - decay / (1 << 12)` itself).
    decay = 1 - decay / (1 << 12)
    grad_decay = grad_input[..., 1:] * output[..., :-1]

    if torch.numel(decay) == 1:  # shared parameters
        grad_decay = torch.sum(grad_decay.flatten(), dim=0, keepdim=True)
    else:
        grad_decay = torch.sum(grad_decay, dim=[0, -1])
        if len(grad_decay.shape) != 1:
            grad_decay = torch.sum(
                grad_decay.reshape(grad_decay.shape[0], -1),
                dim=1
            )

    return grad_input, grad_decay


class _FastLIDynamics(torch.autograd.Function):
    """Drop-in for lava-dl's ``_LIDynamics`` on CPU (same inputs/outputs)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        input: torch.Tensor,
        decay: torch.Tensor,
        state: torch.Tensor,
        threshold: float | int,
        w_scale: int,
    ) -> torch.Tensor:
        output = _fast_li_dynamics_fwd(input, decay, state, threshold, w_scale)
        ctx.save_for_backward(output, decay)
        return output

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_output: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], ...]:
        output, decay = ctx.saved_tensors
        if grad_output.dtype == torch.float32:
            grad_input, grad_decay = _fast_li_dynamics_bwd(
                grad_output, output, decay, ctx.needs_input_grad[1]
            )
        else:
            grad_input, grad_decay = _li._li_dynamics_bwd(grad_output, output, decay)
        return grad_input, grad_decay, None, None, None


def _fast_dynamics(
    input: torch.Tensor,
    decay: torch.Tensor,
    state: torch.Tensor,
    w_scale: int,
    threshold: Optional[float] = None,
    debug: bool = False,
) -> torch.Tensor:
    """Patched ``leaky_integrator.dynamics``: fast on CPU, stock otherwise."""
    stock = _stock("dynamics")
    if debug is True or not isinstance(input, torch.Tensor) or input.is_cuda:
        return stock(input, decay, state, w_scale, threshold, debug)
    # Same argument normalisation as stock dynamics().
    thr: Any = -1 if threshold is None else threshold
    full_state = state
    if isinstance(state, torch.Tensor) and torch.numel(state) == 1:
        full_state = state * torch.ones(input.shape[:-1]).to(input.device)
    if not _li_fast_path_ok(input, decay, full_state, thr, w_scale) or _load_ops() is None:
        return stock(input, decay, state, w_scale, threshold, debug)
    _li._LIDynamics.DEBUG = debug  # stock sets this class flag on every call
    return _FastLIDynamics.apply(input, decay, full_state, thr, w_scale)


# --------------------------------------------------------------------------
# spike
# --------------------------------------------------------------------------
def _fast_spike_forward(
    ctx: Any,
    voltage: torch.Tensor,
    threshold: Any,
    tau_rho: Any,
    scale_rho: Any,
    graded_spike: Any,
    voltage_last: Any,
    scale: Any,
) -> torch.Tensor:
    """``Spike.forward`` with the non-graded spike in one pass."""
    if (
        graded_spike is True
        or not (_is_cpu_f32(voltage) and voltage.is_contiguous())
        or type(threshold) is not float
        or _load_ops() is None
    ):
        return _stock("spike_forward")(
            ctx, voltage, threshold, tau_rho, scale_rho, graded_spike, voltage_last, scale
        )
    device = voltage.device
    dtype = voltage.dtype
    spikes = _ops.spike_fwd(voltage, threshold)
    if not any(ctx.needs_input_grad):
        return spikes  # no backward will run (e.g. inference): skip the saves

    # Verbatim from stock.
    graded_spike = 1 if graded_spike is True else 0
    if torch.is_tensor(threshold) is False:
        threshold = torch.tensor(threshold, device=device, dtype=dtype)
    ctx.save_for_backward(
        voltage,
        torch.autograd.Variable(threshold, requires_grad=False),
        torch.autograd.Variable(
            torch.tensor(tau_rho, device=device, dtype=dtype),
            requires_grad=False
        ),
        torch.autograd.Variable(
            torch.tensor(scale_rho, device=device, dtype=dtype),
            requires_grad=False
        ),
        torch.autograd.Variable(
            torch.tensor(graded_spike, device=device, dtype=dtype),
            requires_grad=False
        ),
    )

    return spikes


def _fast_spike_backward(ctx: Any, grad_spikes: torch.Tensor) -> tuple[Any, ...]:
    """``Spike.backward`` (non-graded) in three passes instead of seven."""
    voltage, threshold, tau_rho, scale_rho, graded_spike = ctx.saved_tensors
    if (
        graded_spike > 0.5
        or not (_is_cpu_f32(voltage) and voltage.is_contiguous())
        or not (_is_cpu_f32(grad_spikes) and grad_spikes.is_contiguous())
        or grad_spikes.shape != voltage.shape
        or threshold.dtype != torch.float32
        or threshold.numel() != 1
        or _load_ops() is None
    ):
        return _stock("spike_backward")(ctx, grad_spikes)
    coef = scale_rho / 2 / tau_rho  # 0-dim float32 ops, as stock
    grad = _spike_grad(voltage, threshold.item(), tau_rho.item(), coef.item(), grad_spikes)
    return grad, None, None, None, None, None, None


def _spike_grad(
    voltage: torch.Tensor, threshold: float, tau_rho: float, coef: float, grad: torch.Tensor
) -> torch.Tensor:
    """Stock's non-graded ``scale_rho / 2 / tau_rho * torch.exp(-torch.abs(voltage
    - threshold) / tau_rho) * grad`` with the same float32 roundings (``coef`` =
    ``scale_rho / 2 / tau_rho`` and ``tau_rho`` already rounded as stock's
    float32 tensors; contiguous float32 ``voltage`` and ``grad``)."""
    exponent = _ops.spike_grad_exponent(voltage, threshold, tau_rho)
    exponent.exp_()  # torch's own exp kernel, as stock
    return _ops.spike_grad_scale_(exponent, coef, grad)


# --------------------------------------------------------------------------
# time-major API
# --------------------------------------------------------------------------
class _LIDynamicsTM(torch.autograd.Function):
    """Leaky integrator on (N, T, *S), zero state, one shared decay (C++)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, x: torch.Tensor, decay: torch.Tensor, threshold: float | int, w_scale: int
    ) -> torch.Tensor:
        mode, thr_f, thr_i = _reset_mode(threshold, w_scale)
        y = _ops.li_fwd_tm(x, decay.detach(), w_scale, mode, thr_f, thr_i)
        # y is only needed for the decay gradient; not saving it otherwise
        # lets a caller free e.g. the current early.
        ctx.save_for_backward(decay, y if ctx.needs_input_grad[1] else None)
        return y

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_y: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], ...]:
        decay, y = ctx.saved_tensors
        grad_x = _ops.li_bwd_tm(grad_y.contiguous(), decay.detach())
        grad_decay = None
        if ctx.needs_input_grad[1]:
            # Stock: torch.sum(flatten(grad_input[..., 1:] * output[..., :-1]))
            # on time-last tensors. Float sums depend on the order, so the
            # terms are laid out time-last and summed by the same torch call.
            terms = _ops.li_decay_terms_tm(grad_x, y)
            grad_decay = torch.sum(terms.flatten(), dim=0, keepdim=True)
        return grad_x, grad_decay, None, None


def _stock_li_dynamics_tm(
    x: torch.Tensor, decay: torch.Tensor, w_scale: int, threshold: Optional[float]
) -> torch.Tensor:
    """Reference/fallback: stock dynamics on the time-last permutation.

    SLAYER's own torch implementation (what stock runs on CPU), on any device:
    for CUDA tensors stock would JIT-compile lava-dl's .cu kernels, which needs
    an nvcc matching torch at run time and is not the CPU's integer path.
    """
    x_tl = x.movedim(1, -1).contiguous()
    state = torch.zeros(x_tl.shape[:-1], dtype=x.dtype, device=x.device)
    _li._LIDynamics.DEBUG = False  # as stock dynamics() sets it
    y = _li._LIDynamics.apply(x_tl, decay, state, -1 if threshold is None else threshold, w_scale)
    return y.movedim(-1, 1).contiguous()


def li_dynamics_tm(
    x: torch.Tensor,
    decay: torch.Tensor,
    w_scale: int,
    threshold: Optional[float] = None,
) -> torch.Tensor:
    """SLAYER's ``leaky_integrator.dynamics`` on a time-major tensor.

    x: (N, T, *S) float32, e.g. (N, T, C, H, W); decay: the quantized integer
    decay, numel 1 (``quantize(neuron.current_decay)``); w_scale: the state
    scale (``neuron.s_scale``); threshold: None (no reset) or the reset
    threshold (``neuron.threshold + neuron.threshold_eps``). Zero initial state.

    Returns y (N, T, *S) contiguous, bit-identical to stock ``dynamics(
    x.movedim(1, -1).contiguous(), decay, zeros, w_scale, threshold)
    .movedim(-1, 1)``; autograd gives stock's gradients for x and decay (the
    decay gradient is only computed when decay requires grad). CPU float32
    with a shared decay runs the C++ kernels; anything else (CUDA, other
    dtypes, per-neuron decays, no compiler) runs stock on the permuted tensor.
    """
    thr: Any = -1 if threshold is None else threshold  # as stock: -1 = no reset
    if (
        _is_cpu_f32(x)
        and x.dim() >= 2
        and _is_cpu_f32(decay)
        and decay.numel() == 1
        and _scalars_ok(thr, w_scale)
        and _load_ops() is not None
    ):
        return _LIDynamicsTM.apply(x.contiguous(), decay, thr, w_scale)
    return _stock_li_dynamics_tm(x, decay, w_scale, threshold)


class _SpikeTM(torch.autograd.Function):
    """Non-graded ``Spike``; elementwise, so any layout (C++)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, voltage: torch.Tensor, threshold: float, tau_rho: float, coef: float
    ) -> torch.Tensor:
        ctx.save_for_backward(voltage)
        ctx.consts = (threshold, tau_rho, coef)
        return _ops.spike_fwd(voltage, threshold)

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_spikes: torch.Tensor
    ) -> tuple[Optional[torch.Tensor], ...]:
        (voltage,) = ctx.saved_tensors
        grad = _spike_grad(voltage, *ctx.consts, grad_spikes.contiguous())
        return grad, None, None, None


def spike_tm(
    voltage: torch.Tensor, threshold: float, tau_rho: float, scale_rho: float
) -> torch.Tensor:
    """SLAYER's non-graded spike function, for any layout (e.g. time-major).

    Same spikes and input gradient bits as stock ``Spike.apply(voltage,
    threshold, tau_rho, scale_rho, False, state, 1)``; from a cuba.Neuron pass
    ``neuron.threshold + neuron.threshold_eps``, ``neuron.tau_rho *
    cuba.TAU_RHO_MULT`` and ``neuron.scale_rho * cuba.SCALE_RHO_MULT``.
    """
    if (
        _is_cpu_f32(voltage)
        and type(threshold) in (int, float)
        and type(tau_rho) in (int, float)
        and type(scale_rho) in (int, float)
        and _load_ops() is not None
    ):
        # Stock keeps these as float32 tensors; round them the same way.
        tau = torch.tensor(tau_rho, dtype=torch.float32)
        coef = torch.tensor(scale_rho, dtype=torch.float32) / 2 / tau
        return _SpikeTM.apply(voltage.contiguous(), float(threshold), tau.item(), coef.item())
    return _Spike.apply(voltage, threshold, tau_rho, scale_rho, False, 0, 1)


# --------------------------------------------------------------------------
# fused CUBA layer pieces (time-major)
# --------------------------------------------------------------------------
_NO_TENSOR = torch.empty(0)


def is_channels_last_tm(x: torch.Tensor) -> bool:
    """Whether a time-major (N, T, C, H, W) tensor is laid out (N, T, H, W, C) in memory
    (the states of a channels-last conv layer): its permutation to that order is a free view."""
    return x.dim() == 5 and not x.is_contiguous() and x.permute(0, 1, 3, 4, 2).is_contiguous()


class _CurrentTM(torch.autograd.Function):
    """CUBA current of an (N, T, *S) input, or of an (N, *S) input held for ``steps`` steps,
    plus its sums over time (N, M) for a batch mean (not differentiable)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, steps: int, decay: torch.Tensor, w_scale: int,  # type: ignore[override]
                sums: bool) -> tuple[torch.Tensor, torch.Tensor]:
        y, _, time_sums = _ops.li_fwd_tm_ex(
            x, steps, decay.detach(), w_scale, _NO_RESET, 0.0, 0, _NO_TENSOR, float("nan"), sums
        )
        ctx.save_for_backward(decay)
        ctx.held = steps > 0
        ctx.mark_non_differentiable(time_sums)
        return y, time_sums

    @staticmethod
    def backward(ctx: Any, grad_y: torch.Tensor, _grad_sums: Any) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        (decay,) = ctx.saved_tensors
        op = _ops.li_bwd_tm_sum if ctx.held else _ops.li_bwd_tm
        return op(grad_y.contiguous(), decay.detach()), None, None, None, None


def fused_ok(x: torch.Tensor, *decays: torch.Tensor) -> bool:
    """Whether the fused time-major CUBA kernels apply (CPU float32, fixed shared decays, extension built)."""
    return (
        _is_cpu_f32(x)
        and all(_is_cpu_f32(d) and d.numel() == 1 and not d.requires_grad for d in decays)
        and _load_ops() is not None
    )


def current_tm(
    x: torch.Tensor, steps: Optional[int], decay: torch.Tensor, w_scale: int, time_sums: bool = False
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """CUBA current ``li_dynamics_tm(x, decay, w_scale)`` (bit for bit) of x (N, T, *S), or of
    x (N, *S) held for ``steps`` steps without materialising the repeat (its input
    gradient is then the sum over time, added in falling t).

    Returns (current (N, T, *S), its sums over time (N, prod(S)) if ``time_sums``
    else None). Requires :func:`fused_ok`.
    """
    y, sums = _CurrentTM.apply(x.contiguous(), steps or 0, decay, w_scale, time_sums)
    return y, (sums if time_sums else None)


def channel_sums(time_sums: torch.Tensor, shape: torch.Size | tuple[int, ...], axis: int) -> torch.Tensor:
    """Per-channel totals from per-neuron sums over time (N, prod(S)) of an (N, T, *S)
    tensor whose channel is ``axis`` (an axis of the (N, T, *S) shape, >= 2)."""
    per_neuron = time_sums.sum(0).view(tuple(shape[2:]))
    axis = axis % len(shape) - 2
    others = [d for d in range(per_neuron.dim()) if d != axis]
    return per_neuron.sum(dim=others) if others else per_neuron  # dim=[] would sum everything


def batch_mean_gradient(batch_mean: Any, channel_total: torch.Tensor, count: int) -> torch.Tensor:
    """What ``current - hook(mean(current))`` adds to the current's gradient g beyond g itself:
    hook'(mean) * -sum(g) / count per channel, shaped to broadcast. batch_mean: (mean
    leaf, centre = hook(mean), channel axis, view shape, reduce, global count); channel_total:
    sum of g per channel. With ``reduce`` (data-parallel training: the mean was the global batch's)
    the totals are summed over the ranks and divided by the global count."""
    mean, centre, _axis, shape, reduce, global_count = batch_mean
    if reduce is not None:
        channel_total, count = reduce(channel_total.double()).to(channel_total.dtype), global_count
    (g_mean,) = torch.autograd.grad(centre, mean, -channel_total)
    return (g_mean / count).view(shape)


class _VoltageSpikeTM(torch.autograd.Function):
    """CUBA voltage (with reset) of ``current - bias`` and its spikes in one pass; backward likewise."""

    @staticmethod
    def forward(ctx: Any, current: torch.Tensor, bias: Optional[torch.Tensor], decay: torch.Tensor,  # type: ignore[override]
                w_scale: int, threshold: float, tau_rho: float, coef: float, norm: Any) -> tuple[torch.Tensor, torch.Tensor]:
        mode, thr_f, thr_i = _reset_mode(threshold, w_scale)
        voltage, spikes, _ = _ops.li_fwd_tm_ex(
            current, 0, decay.detach(), w_scale, mode, thr_f, thr_i,
            _NO_TENSOR if bias is None else bias, float(threshold), False,
        )
        ctx.save_for_backward(voltage, decay)
        ctx.consts = (float(threshold), tau_rho, coef)
        ctx.norm = norm
        ctx.set_materialize_grads(False)  # an unused voltage gets None, not a zero tensor to add
        return voltage, spikes

    @staticmethod
    def backward(ctx: Any, grad_voltage: Optional[torch.Tensor],  # type: ignore[override]
                 grad_spikes: Optional[torch.Tensor]) -> tuple[Optional[torch.Tensor], ...]:
        voltage, decay = ctx.saved_tensors
        if grad_spikes is None:
            grad = torch.zeros_like(voltage)
        else:
            grad = _spike_grad(voltage, *ctx.consts, grad_spikes.contiguous())
        if grad_voltage is not None:
            grad = grad + grad_voltage
        if ctx.norm is None and not ctx.needs_input_grad[1]:
            return _ops.li_bwd_tm(grad.contiguous(), decay.detach()), None, None, None, None, None, None, None
        grad, time_sums = _ops.li_bwd_tm_ex(grad.contiguous(), decay.detach())
        if ctx.norm is None:
            # a learned bias: v integrates current - bias, so its gradient is minus the input's, summed over N and T
            return grad, -time_sums.sum(0), None, None, None, None, None, None
        # the centre is hook(batch mean of the current): the gradient flows through it too
        axis = ctx.norm[2]
        grad.add_(batch_mean_gradient(ctx.norm, channel_sums(time_sums, grad.shape, axis),
                                      grad.numel() // grad.shape[axis]))
        return grad, None, None, None, None, None, None, None


def voltage_spike_tm(
    current: torch.Tensor,
    bias: Optional[torch.Tensor],
    decay: torch.Tensor,
    w_scale: int,
    threshold: float,
    tau_rho: float,
    scale_rho: float,
    norm: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SLAYER's CUBA voltage ``dynamics(current - bias, decay, w_scale, threshold)`` and
    ``spike`` (as :func:`li_dynamics_tm` then :func:`spike_tm`, bit for bit) in one pass.

    current: (N, T, *S) contiguous; bias: per-neuron float32 (numel prod(S)) or
    None; norm: None, or (mean leaf, centre = hook(mean), channel axis, view
    shape) when bias is a batch norm's centre computed from this current, whose
    gradient then flows back through the mean. Requires :func:`fused_ok`.
    """
    tau = torch.tensor(tau_rho, dtype=torch.float32)  # rounded as stock's float32 tensors
    coef = torch.tensor(scale_rho, dtype=torch.float32) / 2 / tau
    return _VoltageSpikeTM.apply(current.contiguous(), bias, decay, w_scale, threshold, tau.item(), coef.item(), norm)


# --------------------------------------------------------------------------
# 24-bit range penalty
# --------------------------------------------------------------------------
class _RangePenalty(torch.autograd.Function):
    """sum(relu(|x| * scale - margin)^2) in one C++ pass each way."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float, margin: float) -> torch.Tensor:  # type: ignore[override]
        total = _ops.range_penalty_fwd(x, scale, margin)
        # A model that stays in range (the usual case) has nothing to push
        # back: the backward then skips its full-size pass.
        ctx.save_for_backward(x if bool(total > 0) else None)
        ctx.consts = (scale, margin)
        return total

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Optional[torch.Tensor], ...]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        if x is None:
            return None, None, None  # autograd reads None as a zero gradient
        return _ops.range_penalty_bwd(x, *ctx.consts, float(grad)), None, None


def range_penalty(x: torch.Tensor, scale: float, margin: float) -> torch.Tensor:
    """``torch.relu(x.abs() * scale - margin).square().sum()`` (0-dim), fused on CPU float32."""
    if _is_cpu_f32(x) and _load_ops() is not None:
        if is_channels_last_tm(x):
            x = x.permute(0, 1, 3, 4, 2)  # a sum over elements: any order, no copy
        return _RangePenalty.apply(x.contiguous(), float(scale), float(margin))
    return torch.relu(x.abs() * scale - margin).square().sum()


# --------------------------------------------------------------------------
# time shift (axon delay)
# --------------------------------------------------------------------------
def _fast_shift_group(input: Any, shift_val: Any, sampling_time: Any = 1) -> torch.Tensor:
    """``utils.time.shift._shift_group`` for CPU float32 in one pass."""
    stock = _stock("shift_group")
    if not (_is_cpu_f32(input) and input.dim() > 1 and input.is_contiguous()):
        return stock(input, shift_val, sampling_time)
    value = shift_val.item() if hasattr(shift_val, "grad") else shift_val
    shift_blocks = int(value / sampling_time)  # as stock
    if shift_blocks == 0 or _load_ops() is None:
        return stock(input, shift_val, sampling_time)
    return _ops.time_shift(input, shift_blocks)


# --------------------------------------------------------------------------
# allocator
# --------------------------------------------------------------------------
def tune_malloc(threshold: int = 1 << 30) -> bool:
    """Keep freed tensor memory in the process instead of returning it (glibc).

    glibc hands large freed blocks (above a dynamic threshold of at most 32 MiB,
    or at the top of the heap) back to the OS, so the next tensor of that size
    is page-faulted in again, which can cost more than the computation: a
    33 MB clone took 12.6 ms instead of 1.9 ms here. Raising M_MMAP_THRESHOLD
    and M_TRIM_THRESHOLD to ``threshold`` bytes avoids it. Process-wide and not
    undone by :func:`uninstall`; resident memory stays at its peak. Helps stock
    lava-dl too. Returns whether both settings were accepted.
    """
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    value = ctypes.c_int(min(threshold, (1 << 31) - 1))
    return bool(mallopt(m_trim_threshold, value)) and bool(mallopt(m_mmap_threshold, value))


# --------------------------------------------------------------------------
# install / uninstall
# --------------------------------------------------------------------------
def install() -> None:
    """Route CPU CUBA dynamics, spikes and time shifts to the fast code.

    Idempotent. The extension is compiled lazily on the first CPU call (or by
    :func:`available`); if that fails the stock code keeps running.
    """
    with _lock:
        if _saved:
            return
        _saved["dynamics"] = _li.dynamics
        _saved["spike_forward"] = _Spike.__dict__["forward"].__func__
        _saved["spike_backward"] = _Spike.__dict__["backward"].__func__
        _saved["shift_group"] = _shift_mod._shift_group
        _li.dynamics = _fast_dynamics
        # autograd.Function looks forward/backward up on the class per call.
        _Spike.forward = staticmethod(_fast_spike_forward)
        _Spike.backward = staticmethod(_fast_spike_backward)
        _shift_mod._shift_group = _fast_shift_group


def uninstall() -> None:
    """Restore everything :func:`install` replaced."""
    with _lock:
        if not _saved:
            return
        _li.dynamics = _saved.pop("dynamics")
        _Spike.forward = staticmethod(_saved.pop("spike_forward"))
        _Spike.backward = staticmethod(_saved.pop("spike_backward"))
        _shift_mod._shift_group = _saved.pop("shift_group")


def is_installed() -> bool:
    """Whether :func:`install` is in effect."""
    return _li.dynamics is _fast_dynamics
