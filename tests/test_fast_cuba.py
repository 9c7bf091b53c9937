"""lava_allnet.kernels.fast_cuba must be bit-identical to lava-dl's stock CPU code.

Every comparison runs the same computation with the patch uninstalled (stock)
and installed (fast) and compares with torch.equal (exact; plus the raw bits
of float outputs, so -0.0 vs +0.0 would also be caught).
"""
from __future__ import annotations

import shutil
import sys
from typing import Callable, Iterator

import pytest
import torch

from lava_allnet.kernels import fast_cuba

from lava.lib.dl import slayer  # noqa: E402  (after the compat layer)
from lava.lib.dl.slayer.neuron import cuba
from lava.lib.dl.slayer.neuron.dynamics import leaky_integrator
from lava.lib.dl.slayer.spike.spike import Spike

_shift_mod = sys.modules["lava.lib.dl.slayer.utils.time.shift"]
STOCK_DYNAMICS = leaky_integrator.dynamics
STOCK_SPIKE_FWD = Spike.forward
STOCK_SPIKE_BWD = Spike.backward
STOCK_SHIFT_GROUP = _shift_mod._shift_group

requires_ext = pytest.mark.skipif(
    not fast_cuba.available(), reason="C++ extension could not be built"
)


@pytest.fixture(autouse=True)
def _restore() -> Iterator[None]:
    fast_cuba.uninstall()
    yield
    fast_cuba.uninstall()


def _same(a: object, b: object) -> bool:
    """Exact equality of tensors (dtype, shape, values; float32 bit for bit)."""
    if a is None or b is None:
        return a is None and b is None
    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype == torch.float32:  # bits: also tells -0.0 from 0.0, and NaNs apart
        return torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))
    return torch.equal(a, b)


def _both(fn: Callable[[], tuple]) -> tuple[tuple, tuple]:
    """Run ``fn`` stock, then fast; return both results."""
    fast_cuba.uninstall()
    stock = fn()
    fast_cuba.install()
    fast = fn()
    fast_cuba.uninstall()
    return stock, fast


def _assert_same(stock: tuple, fast: tuple, names: tuple[str, ...]) -> None:
    for name, a, b in zip(names, stock, fast):
        assert _same(a, b), f"{name} differs between stock and fast"


def _ops_used(fn: Callable[[], object]) -> set[str]:
    fast_cuba.install()
    with torch.profiler.profile() as prof:
        fn()
    fast_cuba.uninstall()
    return {e.name.split("::")[-1] for e in prof.events() if e.name.startswith("lava_allnet_cuba")}


# ---------------------------------------------------------------------------
# full CUBA neuron
# ---------------------------------------------------------------------------
NEURON_OUT = ("current", "voltage", "spikes", "grad_input", "grad_current_decay",
              "grad_voltage_decay")


def _neuron_run(
    shape: tuple[int, ...], kwargs: dict, scale: float, seed: int, steps: int = 1
) -> Callable[[], tuple]:
    def run() -> tuple:
        torch.manual_seed(seed)
        neuron = cuba.Neuron(requires_grad=True, **kwargs)
        out: tuple = ()
        for _ in range(steps):  # >1 exercises persistent (non-zero) states
            x = ((torch.rand(shape) - 0.4) * scale).requires_grad_(True)
            current, voltage = neuron.dynamics(x)
            spikes = neuron.spike(voltage)
            w = torch.randn(3, *shape)
            loss = (spikes * w[0]).sum() + (voltage * w[1]).sum() + (current * w[2]).sum()
            loss.backward()
            out = (current, voltage, spikes, x.grad,
                   neuron.current_decay.grad, neuron.voltage_decay.grad)
        return tuple(t.detach().clone() if t is not None else None for t in out)

    return run


SHAPES = [
    (1, 3, 1),            # T = 1
    (2, 5, 16),           # NCT
    (1, 4, 5, 6, 8),      # NCHWT, batch 1
    (3, 2, 5, 7, 32),     # NCHWT, batch 3, T = 32
    (2, 37, 5),           # neuron count not a multiple of the SIMD block
]
DECAYS = [(0.0, 0.0), (1.0, 1.0), (0.25, 0.03), (0.731, 0.119)]
THRESHOLDS = [0.01, 1.25, 1e4]


@requires_ext
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("decays", DECAYS)
@pytest.mark.parametrize("threshold", THRESHOLDS)
def test_neuron_shared_decay(shape, decays, threshold):
    kwargs = dict(threshold=threshold, current_decay=decays[0], voltage_decay=decays[1],
                  tau_grad=0.1, scale_grad=2)
    stock, fast = _both(_neuron_run(shape, kwargs, scale=4.0, seed=hash(shape) % 1000))
    _assert_same(stock, fast, NEURON_OUT)


@requires_ext
@pytest.mark.parametrize("shape", [(2, 6, 16), (1, 5, 3, 5, 8), (2, 4, 2, 4, 3)])
@pytest.mark.parametrize("threshold", [0.3, 1.25])
def test_neuron_per_channel_decay(shape, threshold):
    # Stock's CPU path broadcasts a [C] decay against the trailing state dim, so
    # it only runs for NCT input or NCHWT with W == C; we mirror exactly that.
    kwargs = dict(threshold=threshold, current_decay=(0.1, 0.6), voltage_decay=(0.02, 0.3),
                  shared_param=False, tau_grad=0.1, scale_grad=2)
    stock, fast = _both(_neuron_run(shape, kwargs, scale=4.0, seed=7))
    _assert_same(stock, fast, NEURON_OUT)


@requires_ext
@pytest.mark.parametrize("scale", [1e-3, 1e3, 1e9, 1e14])
def test_neuron_magnitudes(scale):
    # 1e-3: truncations to -0.0 (int64 has no -0). 1e9 and 1e14 leave the
    # SIMD path's exact range (2^40); 1e14 also overflows int64 products
    # (torch wraps around; so must we).
    kwargs = dict(threshold=1.25, current_decay=0.2, voltage_decay=0.05)
    stock, fast = _both(_neuron_run((2, 9, 3, 3, 12), kwargs, scale=scale, seed=3))
    _assert_same(stock, fast, NEURON_OUT)


@requires_ext
def test_neuron_persistent_state_and_graded_spike():
    kwargs = dict(threshold=0.5, current_decay=0.3, voltage_decay=0.1, persistent_state=True)
    stock, fast = _both(_neuron_run((2, 4, 3, 3, 8), kwargs, scale=3.0, seed=5, steps=3))
    _assert_same(stock, fast, NEURON_OUT)
    kwargs = dict(threshold=0.5, current_decay=0.3, voltage_decay=0.1, graded_spike=True)
    stock, fast = _both(_neuron_run((2, 4, 3, 3, 8), kwargs, scale=3.0, seed=5))
    _assert_same(stock, fast, NEURON_OUT)


@requires_ext
def test_neuron_uses_fast_kernels():
    kwargs = dict(threshold=1.25, current_decay=0.25, voltage_decay=0.03)
    used = _ops_used(_neuron_run((2, 4, 5, 6, 8), kwargs, scale=4.0, seed=1))
    assert {"li_fwd", "li_bwd", "spike_fwd", "spike_grad_exponent", "spike_grad_scale_"} <= used


@requires_ext
def test_per_channel_nchwt_mismatch_raises_like_stock():
    def run() -> tuple:
        neuron = cuba.Neuron(threshold=1.0, current_decay=0.2, voltage_decay=0.1,
                             shared_param=False)
        return (neuron(torch.rand(1, 4, 3, 6, 8)),)

    for installed in (False, True):
        fast_cuba.install() if installed else fast_cuba.uninstall()
        with pytest.raises(RuntimeError):
            run()


# ---------------------------------------------------------------------------
# leaky_integrator.dynamics directly
# ---------------------------------------------------------------------------
def _dynamics_run(make_input: Callable[[], torch.Tensor], decay: torch.Tensor,
                  state: torch.Tensor, threshold, w_scale: int = 1 << 12) -> Callable[[], tuple]:
    def run() -> tuple:
        torch.manual_seed(11)
        x = make_input().requires_grad_(True)
        d = decay.clone().requires_grad_(True)
        # stock scales a tensor threshold in place (`threshold *= w_scale`)
        thr = threshold.clone() if isinstance(threshold, torch.Tensor) else threshold
        y = leaky_integrator.dynamics(x, d, state, w_scale, thr)
        grad = torch.randn(y.shape[::-1]).permute(*reversed(range(y.dim())))  # non-contiguous
        y.backward(grad)
        return y.detach(), x.grad, d.grad, torch.tensor(y.stride())

    return run


DYN_OUT = ("output", "grad_input", "grad_decay", "output_strides")


@requires_ext
@pytest.mark.parametrize("threshold", [None, -1, 0.7, 3, 1e-9])
@pytest.mark.parametrize("w_scale", [1 << 12, 64, 100])
def test_dynamics_thresholds_and_scales(threshold, w_scale):
    run = _dynamics_run(lambda: torch.randn(3, 5, 4, 10) * 2, torch.tensor([700.0]),
                        torch.randn(3, 5, 4) * 0.5, threshold, w_scale)
    _assert_same(*_both(run), DYN_OUT)


@requires_ext
@pytest.mark.parametrize("offset", [0.5, 1.5, 2.5, 3.5])
def test_dynamics_threshold_float_rounding(offset):
    # Above 2^24 float32(state) rounds (ties to even): stock compares in
    # float32, so states just below the threshold can spike.
    base = float(1 << 24)

    def make_input() -> torch.Tensor:
        x = torch.zeros(2, 32, 3)
        x[..., 0] = torch.arange(32) % 4
        x[..., 1] = base
        return x

    run = _dynamics_run(make_input, torch.tensor([0.0]), torch.zeros(1), base + offset, 1)
    _assert_same(*_both(run), DYN_OUT)


@requires_ext
@pytest.mark.parametrize("decay", [[0.0], [4096.0], [5000.0], [-300.0], [1234.0, 17.0, 4000.0]])
def test_dynamics_decays(decay):
    # Out-of-range decays ([5000], [-300]) take the exact scalar path.
    run = _dynamics_run(lambda: torch.randn(2, 3, 9) * 3, torch.tensor(decay),
                        torch.zeros(1), 0.5)
    _assert_same(*_both(run), DYN_OUT)


@requires_ext
def test_dynamics_non_contiguous_and_broadcast_state():
    run = _dynamics_run(lambda: torch.randn(2, 8, 6).transpose(1, 2),  # [2, 6, 8], T strided
                        torch.tensor([900.0]), torch.randn(1, 6), 0.4)
    _assert_same(*_both(run), DYN_OUT)


@requires_ext
def test_dynamics_fallbacks_match_stock():
    # float64 input, tensor threshold, debug: all handled by stock code.
    cases = [
        _dynamics_run(lambda: torch.randn(2, 3, 5, dtype=torch.float64),
                      torch.tensor([100.0]), torch.zeros(1), 0.5),
        _dynamics_run(lambda: torch.randn(2, 3, 5), torch.tensor([100.0]), torch.zeros(1),
                      torch.tensor(0.5)),
    ]
    for run in cases:
        _assert_same(*_both(run), DYN_OUT)

    def debug_run() -> tuple:
        x = torch.randn(2, 3, 5)
        return (leaky_integrator.dynamics(x, torch.tensor([10.0]), torch.zeros(1), 64, 0.5,
                                          debug=True),)

    assert _ops_used(debug_run) == set()


# ---------------------------------------------------------------------------
# blocks (synapse + neuron + axon delay)
# ---------------------------------------------------------------------------
@requires_ext
@pytest.mark.parametrize("batch", [1, 3])
def test_conv_block(batch):
    params = {"threshold": 0.5, "current_decay": 0.25, "voltage_decay": 0.03,
              "tau_grad": 0.03, "scale_grad": 3, "requires_grad": True}

    def run() -> tuple:
        torch.manual_seed(0)
        net = torch.nn.Sequential(
            slayer.block.cuba.Conv(params, 2, 6, 3, stride=2, padding=1, weight_scale=2),
            slayer.block.cuba.Conv(params, 6, 4, 3, padding=1, weight_scale=2),
        )
        x = (torch.rand(batch, 2, 12, 12, 8) < 0.3).float().requires_grad_(True)
        out = net(x)
        loss = ((out.flatten(1, -2).mean(-1) - 0.1) ** 2).sum()
        loss.backward()
        grads = [p.grad for p in net.parameters()]
        return (out.detach(), x.grad, *grads)

    stock, fast = _both(run)
    assert len(stock) == len(fast) == 2 + 2 * 3  # weight + 2 decays per block
    _assert_same(stock, fast, ("output", "grad_input") + ("param_grad",) * 6)
    assert {"li_fwd", "li_bwd", "spike_fwd", "time_shift"} <= _ops_used(run)


@requires_ext
@pytest.mark.parametrize("shift", [1, -1, 2, -3, 8, -9])
def test_time_shift(shift):
    x = torch.randn(3, 4, 7)
    assert _same(STOCK_SHIFT_GROUP(x, shift, 1), fast_cuba._fast_shift_group(x, shift, 1))


# ---------------------------------------------------------------------------
# install / uninstall
# ---------------------------------------------------------------------------
def test_install_uninstall_restores_stock():
    fast_cuba.install()
    fast_cuba.install()  # idempotent
    assert fast_cuba.is_installed()
    assert leaky_integrator.dynamics is not STOCK_DYNAMICS
    assert Spike.forward is not STOCK_SPIKE_FWD
    fast_cuba.uninstall()
    assert not fast_cuba.is_installed()
    assert leaky_integrator.dynamics is STOCK_DYNAMICS
    assert Spike.forward is STOCK_SPIKE_FWD
    assert Spike.backward is STOCK_SPIKE_BWD
    assert _shift_mod._shift_group is STOCK_SHIFT_GROUP
    fast_cuba.uninstall()  # harmless when not installed
    assert leaky_integrator.dynamics is STOCK_DYNAMICS


def test_extension_builds():
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler")
    assert fast_cuba.available()
    assert fast_cuba.extension_dir().is_dir()


def test_build_failure_falls_back_with_one_warning(monkeypatch, tmp_path):
    monkeypatch.setattr(fast_cuba, "_ops", None)
    monkeypatch.setattr(fast_cuba, "_load_attempted", False)
    monkeypatch.setattr(fast_cuba, "_SOURCES", (tmp_path / "missing.cpp",))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    x = torch.randn(2, 3, 4, 5)
    expected = STOCK_DYNAMICS(x, torch.tensor([100.0]), torch.zeros(1), 64, 0.5)
    fast_cuba.install()
    with pytest.warns(RuntimeWarning, match="stock") as record:
        outs = [leaky_integrator.dynamics(x, torch.tensor([100.0]), torch.zeros(1), 64, 0.5)
                for _ in range(3)]
        neuron = cuba.Neuron(threshold=1.0, current_decay=0.2, voltage_decay=0.1)
        neuron(torch.rand(1, 3, 8))
    assert len([w for w in record if issubclass(w.category, RuntimeWarning)]) == 1
    assert all(_same(o, expected) for o in outs)
    assert not fast_cuba.available()


# ---------------------------------------------------------------------------
# time-major API: li_dynamics_tm / spike_tm vs stock on the time-last tensor
# ---------------------------------------------------------------------------
S_SCALE = 1 << 12  # cuba.Neuron(scale=64).s_scale


def _bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and _same(a.contiguous(), b.contiguous())


def _tm_vs_stock(
    x: torch.Tensor, decay: torch.Tensor, threshold, w_scale: int = S_SCALE,
    decay_grad: bool = True,
) -> None:
    """li_dynamics_tm on x (N, T, *S) == stock dynamics on the time-last copy."""
    g = torch.randn(x.shape)  # upstream gradient, time-major
    x_tl = x.movedim(1, -1).contiguous().requires_grad_(True)
    d_ref = decay.clone().requires_grad_(decay_grad)
    y_ref = STOCK_DYNAMICS(x_tl, d_ref, torch.zeros(x_tl.shape[:-1]), w_scale, threshold)
    y_ref.backward(g.movedim(1, -1).contiguous())

    x_tm = x.clone().requires_grad_(True)
    d_tm = decay.clone().requires_grad_(decay_grad)
    y = fast_cuba.li_dynamics_tm(x_tm, d_tm, w_scale, threshold)
    assert y.is_contiguous()
    y.backward(g)

    assert _bits(y, y_ref.detach().movedim(-1, 1)), "output"
    assert _bits(x_tm.grad, x_tl.grad.movedim(-1, 1)), "grad_input"
    if decay_grad:
        assert d_tm.grad.shape == d_ref.grad.shape and _bits(d_tm.grad, d_ref.grad), "grad_decay"
    else:
        assert d_tm.grad is None


TM_SHAPES = [(n, t, *s) for n in (1, 3) for t in (1, 2, 16) for s in ((5,), (4, 6, 7))]
TM_SHAPES += [(3, 16), (2, 16, 1029)]  # no neuron dims; > 2 chunks of 512 neurons


@requires_ext
@pytest.mark.parametrize("shape", TM_SHAPES)
@pytest.mark.parametrize("decay", ["zero", "full", "random"])
@pytest.mark.parametrize("threshold", [None, 0.3, 80.0 + 0.5 / S_SCALE])
def test_li_dynamics_tm(shape, decay, threshold):
    # a fixed seed per case (hash() of a tuple changes with PYTHONHASHSEED)
    torch.manual_seed(TM_SHAPES.index(shape) * 3 + ["zero", "full", "random"].index(decay))
    value = {"zero": 0.0, "full": 4096.0, "random": float(torch.randint(1, 4096, ()))}[decay]
    x = torch.randn(shape) * 30  # crosses both thresholds
    for decay_grad in (True, False):
        _tm_vs_stock(x, torch.tensor([value]), threshold, decay_grad=decay_grad)


@requires_ext
@pytest.mark.parametrize("scale", [1e-3, 1e3, 1e9, 1e14])
@pytest.mark.parametrize("threshold", [None, 1.25])
def test_li_dynamics_tm_magnitudes(scale, threshold):
    # 1e-3: truncation to -0.0; 1e9 / 1e14 leave the SIMD exact range (2^40)
    # and 1e14 overflows int64 products (torch wraps, so must we).
    torch.manual_seed(3)
    x = (torch.rand(3, 12, 9, 3, 3) - 0.4) * scale
    _tm_vs_stock(x, torch.tensor([819.0]), threshold)


@requires_ext
@pytest.mark.parametrize(
    "decay, threshold, w_scale",
    [(5000.0, 0.5, S_SCALE), (-300.0, 0.5, S_SCALE),  # outside the SIMD decay range
     (700.0, 3, S_SCALE), (700.0, 0.7, 100), (700.0, -1, 64), (700.0, 0.0, 64)],
)
def test_li_dynamics_tm_other_paths(decay, threshold, w_scale):
    # int threshold (integer compare), non-power-of-2 scale, threshold <= 0
    torch.manual_seed(4)
    _tm_vs_stock(torch.randn(2, 7, 3, 37) * 2, torch.tensor([decay]), threshold, w_scale)


@requires_ext
@pytest.mark.parametrize("offset", [0.5, 1.5, 2.5, 3.5])
def test_li_dynamics_tm_threshold_float_rounding(offset):
    # As test_dynamics_threshold_float_rounding: above 2^24 stock compares
    # float32-rounded states, so states just below the threshold can reset.
    base = float(1 << 24)
    x = torch.zeros(2, 3, 32)
    x[:, 0] = torch.arange(32) % 4
    x[:, 1] = base
    _tm_vs_stock(x, torch.tensor([0.0]), base + offset, w_scale=1)


@requires_ext
@pytest.mark.parametrize("shape", [(1, 1, 5), (3, 16, 4, 6, 7), (2, 5, 1029)])
@pytest.mark.parametrize("threshold", [0.3, 80.0 + 0.5 / S_SCALE])
def test_spike_tm(shape, threshold):
    torch.manual_seed(5)
    v = torch.randn(shape) * threshold * 2
    v.view(-1)[:3] = threshold  # voltage == threshold spikes
    g = torch.randn(shape)
    tau_rho, scale_rho = threshold * 100, 0.5 * 0.1

    v_ref = v.clone().requires_grad_(True)
    s_ref = Spike.apply(v_ref, threshold, tau_rho, scale_rho, False, 0, 1)
    s_ref.backward(g)
    v_tm = v.clone().requires_grad_(True)
    s = fast_cuba.spike_tm(v_tm, threshold, tau_rho, scale_rho)
    s.backward(g)
    assert _bits(s, s_ref.detach()) and _bits(v_tm.grad, v_ref.grad)


def _cuba_tm_vs_neuron(shape: tuple[int, ...], requires_grad: bool, seed: int) -> None:
    torch.manual_seed(seed)
    neuron = cuba.Neuron(threshold=80, current_decay=0.25, voltage_decay=0.03,
                         tau_grad=1, scale_grad=0.5, scale=64, requires_grad=requires_grad)
    neuron.threshold_eps = 0.5 / neuron.s_scale
    z = torch.randn(shape) * 40
    w = torch.randn(3, *shape)  # gradients for spikes, voltage, current (time-major)

    # reference: the neuron itself on the time-last tensor
    z_tl = z.movedim(1, -1).contiguous().requires_grad_(True)
    current, voltage = neuron.dynamics(z_tl)
    spikes = neuron.spike(voltage)
    ref = [t.detach().movedim(-1, 1) for t in (current, voltage, spikes)]
    loss = sum((t * wi.movedim(1, -1)).sum() for t, wi in zip((spikes, voltage, current), w))
    loss.backward()
    ref_grads = [z_tl.grad.movedim(-1, 1)]
    if requires_grad:
        ref_grads += [neuron.current_decay.grad.clone(), neuron.voltage_decay.grad.clone()]
        neuron.current_decay.grad = neuron.voltage_decay.grad = None

    # time-major
    z_tm = z.clone().requires_grad_(True)
    thr = neuron.threshold + neuron.threshold_eps
    current = fast_cuba.li_dynamics_tm(z_tm, slayer.utils.quantize(neuron.current_decay),
                                       neuron.s_scale)
    voltage = fast_cuba.li_dynamics_tm(current, slayer.utils.quantize(neuron.voltage_decay),
                                       neuron.s_scale, thr)
    spikes = fast_cuba.spike_tm(voltage, thr, neuron.tau_rho * cuba.TAU_RHO_MULT,
                                neuron.scale_rho * cuba.SCALE_RHO_MULT)
    loss = sum((t * wi).sum() for t, wi in zip((spikes, voltage, current), w))
    loss.backward()
    grads = [z_tm.grad]
    if requires_grad:
        grads += [neuron.current_decay.grad, neuron.voltage_decay.grad]

    for name, a, b in zip(("current", "voltage", "spikes"), (current, voltage, spikes), ref):
        assert _bits(a.detach(), b), name
    assert 0 < float(spikes.detach().sum()) < spikes.numel()  # the test exercises resets
    for name, a, b in zip(("grad_input", "grad_current_decay", "grad_voltage_decay"),
                          grads, ref_grads):
        assert _bits(a, b), name


@requires_ext
@pytest.mark.parametrize("shape", [(1, 16, 5), (3, 16, 4, 6, 7), (2, 8, 16, 9, 9)])
@pytest.mark.parametrize("requires_grad", [False, True])
def test_cuba_neuron_tm(shape, requires_grad):
    _cuba_tm_vs_neuron(shape, requires_grad, seed=len(shape))


@requires_ext
def test_cuba_neuron_tm_installed_and_fast_kernels():
    # Reference with install() (the fast time-last kernels) is the same too,
    # and the time-major path runs only the time-major kernels.
    fast_cuba.install()
    _cuba_tm_vs_neuron((2, 8, 4, 6, 7), True, seed=9)

    def run() -> None:
        z = torch.randn(2, 8, 4, 6, 7, requires_grad=True)
        d = torch.tensor([1024.0])
        v = fast_cuba.li_dynamics_tm(fast_cuba.li_dynamics_tm(z, d, S_SCALE), d, S_SCALE, 0.5)
        fast_cuba.spike_tm(v, 0.5, 50.0, 0.05).sum().backward()

    with torch.profiler.profile() as prof:
        run()
    used = {e.name.split("::")[-1] for e in prof.events()
            if e.name.startswith("lava_allnet_cuba")}
    assert used == {"li_fwd_tm", "li_bwd_tm", "spike_fwd", "spike_grad_exponent",
                    "spike_grad_scale_"}


def test_tm_fallbacks_match_stock(monkeypatch):
    # float64 and per-neuron decays go to stock on the permuted tensor; so does
    # everything when the extension is unavailable.
    torch.manual_seed(6)
    x = torch.randn(2, 5, 3, 4) * 3
    _tm_vs_stock(x.double(), torch.tensor([700.0], dtype=torch.float64), 0.5)
    y = fast_cuba.li_dynamics_tm(x, torch.tensor([700.0, 100.0, 5.0, 9.0]), S_SCALE)
    ref = STOCK_DYNAMICS(x.movedim(1, -1).contiguous(), torch.tensor([700.0, 100.0, 5.0, 9.0]),
                         torch.zeros(1), S_SCALE)
    assert _bits(y, ref.movedim(-1, 1))
    monkeypatch.setattr(fast_cuba, "_ops", None)
    monkeypatch.setattr(fast_cuba, "_load_attempted", True)
    _tm_vs_stock(x, torch.tensor([700.0]), 0.5)
    v = torch.randn(2, 5, 3)
    assert _bits(fast_cuba.spike_tm(v, 0.5, 50.0, 0.05), (v >= 0.5).float())


def test_tm_fallback_never_uses_the_stock_dispatcher(monkeypatch):
    # lava-dl's dynamics() JIT-compiles CUDA kernels for CUDA tensors; the
    # time-major fallback (what CUDA tensors take) runs SLAYER's torch code instead.
    torch.manual_seed(7)
    x = torch.randn(2, 5, 3, 4) * 3
    ref = fast_cuba.li_dynamics_tm(x, torch.tensor([700.0]), S_SCALE, 0.5)

    def refuse(*args, **kwargs):
        raise AssertionError("stock dynamics() dispatcher called")

    monkeypatch.setitem(fast_cuba._saved, "dynamics", refuse)
    monkeypatch.setattr(fast_cuba, "_ops", None)
    monkeypatch.setattr(fast_cuba, "_load_attempted", True)
    assert _bits(fast_cuba.li_dynamics_tm(x, torch.tensor([700.0]), S_SCALE, 0.5), ref)
