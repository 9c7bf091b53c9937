"""hw_targets.lava_models: fast fixed-point Lava models are bit-exact with stock."""
from __future__ import annotations

import typing as ty
import warnings

import numpy as np
import pytest
from scipy.sparse import csr_matrix

from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.conv import utils as conv_utils
from lava.proc.conv.process import Conv
from lava.proc.dense.models import PyDenseModelBitAcc
from lava.proc.dense.process import Dense
from lava.proc.io.sink import RingBuffer as Sink
from lava.proc.io.source import RingBuffer as Source
from lava.proc.lif.models import PyLifModelBitAcc, PyLifResetModelBitAcc
from lava.proc.lif.process import LIF, LIFReset
from lava.proc.sparse.models import PySparseModelBitAcc
from lava.proc.sparse.process import Sparse
from lava.utils.weightutils import SignMode

from hw_targets.lava_models import (ConvPlan, FastPyDenseModelBitAcc,
                                    FastPyLifModelBitAcc,
                                    FastPyLifResetModelBitAcc,
                                    FastPySparseModelBitAcc, F32_EXACT,
                                    F64_EXACT, _wrap24, fast_conv,
                                    fast_exception_map)


# ------------------------------------------------------------ conv kernel
def _random_conv_case(rng: np.random.Generator) -> ty.Tuple[np.ndarray, ...]:
    groups = int(rng.choice([1, 1, 2, 3, 4]))
    depthwise = rng.random() < 0.25
    c_grp = 1 if depthwise else int(rng.integers(1, 4))
    k_grp = int(rng.integers(1, 4))
    kernel = (int(rng.integers(1, 5)), int(rng.integers(1, 5)))
    stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
    in_shape = tuple(int(rng.integers(d * (k - 1) + 1, 14))
                     for d, k in zip(dilation, kernel)) + (groups * c_grp,)
    kind = rng.integers(0, 4)
    if kind == 0:    # binary spikes
        x = rng.random(in_shape) < rng.uniform(0.05, 0.9)
    elif kind == 1:  # small signed graded spikes
        x = rng.integers(-200, 200, in_shape).astype(np.int32)
    elif kind == 2:  # 16-bit positive graded spikes
        x = rng.integers(0, 1 << 16, in_shape).astype(np.int32)
    else:            # full 24-bit signed payloads
        x = rng.integers(-(1 << 23), 1 << 23, in_shape).astype(np.int32)
    w_max = int(rng.choice([128, 1 << 12, 1 << 20, 1 << 30]))
    weight = rng.integers(-w_max, w_max, (groups * k_grp,) + kernel + (c_grp,),
                          dtype=np.int64)
    if rng.random() < 0.9:  # the Conv model's weight Var is int32
        weight = weight.astype(np.int32)
    return x, weight, kernel, stride, padding, dilation, groups


def test_fast_conv_matches_stock_on_random_configs() -> None:
    rng = np.random.default_rng(20240611)
    paths = {"float32": 0, "float64": 0, "stock": 0}
    wrapped = 0
    with warnings.catch_warnings():
        # Out-of-int32 float64 sums give "invalid value in cast" in both.
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(400):
            x, weight, kernel, stride, padding, dilation, groups = \
                _random_conv_case(rng)
            ref = conv_utils.signed_clamp(conv_utils.conv(
                x, weight, kernel, stride, padding, dilation, groups), bits=24)
            out = fast_conv(x, weight, kernel, stride, padding, dilation,
                            groups)
            assert out.dtype == weight.dtype
            out = (_wrap24(out) if out.dtype == np.int32
                   else conv_utils.signed_clamp(out, bits=24))
            assert out.dtype == ref.dtype
            assert np.array_equal(out, ref), (x.shape, weight.shape, stride,
                                              padding, dilation, groups)
            plan = ConvPlan(weight, x.shape, stride, padding, dilation, groups)
            bound = plan.w_l1 * (1 if x.dtype == bool else int(np.abs(x).max()))
            paths["float32" if bound < F32_EXACT else
                  "float64" if bound < F64_EXACT else "stock"] += 1
            raw = conv_utils.conv(x, weight, kernel, stride, padding, dilation,
                                  groups)
            wrapped += bool(np.any(raw != ref))
    assert min(paths.values()) >= 20, paths
    assert wrapped >= 50  # the 24-bit wrap is really exercised


def test_conv_plan_rejects_bad_groups() -> None:
    with pytest.raises(ValueError):
        ConvPlan(np.ones((4, 3, 3, 2), np.int32), (8, 8, 3), (1, 1), (0, 0),
                 (1, 1), 2)


# ------------------------------------------- models driven without Lava
class _In:
    def __init__(self, shape: ty.Tuple[int, ...]) -> None:
        self.shape = shape
        self.data: np.ndarray = np.zeros(shape, np.int32)

    def recv(self) -> np.ndarray:
        return self.data.copy()


class _Out:
    def __init__(self) -> None:
        self.sent: ty.List[np.ndarray] = []

    def send(self, data: np.ndarray) -> None:
        self.sent.append(np.array(data, copy=True))


def _make(cls: type, params: ty.Dict[str, ty.Any], in_shape: ty.Tuple[int, ...],
          **attrs: ty.Any) -> ty.Any:
    model = cls(params)
    model.s_in, model.a_out = _In(in_shape), _Out()
    for name, value in attrs.items():
        setattr(model, name, value.copy() if hasattr(value, "copy") else value)
    return model


def _inputs(rng: np.random.Generator, n: int, graded: bool) -> np.ndarray:
    if not graded:
        return (rng.random(n) < rng.uniform(0.05, 0.9)).astype(np.int32)
    hi = int(rng.choice([1 << 7, 1 << 15, 1 << 23, 1 << 30]))
    return rng.integers(-hi, hi, n).astype(np.int32)


@pytest.mark.parametrize("sparse", [False, True])
def test_dense_and_sparse_models_match_stock(sparse: bool) -> None:
    rng = np.random.default_rng(7 + sparse)
    stock_cls = PySparseModelBitAcc if sparse else PyDenseModelBitAcc
    fast_cls = FastPySparseModelBitAcc if sparse else FastPyDenseModelBitAcc
    for case in range(40):
        n_out, n_in = int(rng.integers(1, 40)), int(rng.integers(1, 300))
        lo, hi = [(-300, 300), (0, 256), (-256, 1), (-128, 128)][case % 4]
        w = rng.integers(lo, hi, (n_out, n_in)).astype(np.int32)
        w[rng.random(w.shape) < 0.7] = 0
        weights = csr_matrix(w) if sparse else w
        graded = bool(rng.integers(0, 2))
        params = {"weight_exp": int(rng.integers(-3, 4)),
                  "num_weight_bits": int(rng.integers(3, 9))}
        if rng.random() < 0.3:
            params["sign_mode"] = SignMode.MIXED
        attrs = dict(weights=weights, a_buff=np.zeros(n_out, np.int32),
                     num_message_bits=np.array([8 if graded else 0]))
        ref = _make(stock_cls, params, (n_in,), **attrs)
        new = _make(fast_cls, params, (n_in,), **attrs)
        for _ in range(3):
            ref.s_in.data = new.s_in.data = _inputs(rng, n_in, graded)
            ref.run_spk()
            new.run_spk()
            assert ref.a_buff.dtype == new.a_buff.dtype
            assert np.array_equal(ref.a_buff, new.a_buff), case
        for a, b in zip(ref.a_out.sent, new.a_out.sent):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("reset", [False, True])
def test_lif_models_match_stock(reset: bool) -> None:
    rng = np.random.default_rng(11 + reset)
    stock_cls = PyLifResetModelBitAcc if reset else PyLifModelBitAcc
    fast_cls = FastPyLifResetModelBitAcc if reset else FastPyLifModelBitAcc
    for case in range(30):
        n = int(rng.integers(1, 500))
        params = {"reset_interval": 4, "reset_offset": 1} if reset else {}
        attrs = dict(u=rng.integers(-(1 << 23), 1 << 23, n).astype(np.int32),
                     v=rng.integers(-(1 << 23), 1 << 23, n).astype(np.int32),
                     du=int(rng.choice([0, 1, 300, 2048, 4095])),
                     dv=int(rng.choice([0, 1, 300, 2048, 4095])),
                     bias_mant=(rng.integers(-4096, 4096, n) * (case % 3 > 0))
                     .astype(np.int16),
                     bias_exp=rng.integers(-3, 8, n).astype(np.int16),
                     vth=int(rng.integers(0, 1 << 17)))
        models = []
        for cls in (stock_cls, fast_cls):
            m = cls(params)
            m.a_in, m.s_out = _In((n,)), _Out()
            for name, value in attrs.items():
                setattr(m, name, value.copy() if hasattr(value, "copy") else value)
            models.append(m)
        for t in range(1, 7):
            hi = int(rng.choice([1 << 6, 1 << 14, 1 << 20]))
            a_in = rng.integers(-hi, hi, n).astype(np.int32)
            for m in models:
                m.time_step = t
                m.a_in.data = a_in
                m.run_spk()
            ref, new = models
            assert np.array_equal(ref.u, new.u), case
            assert np.array_equal(ref.v, new.v), case
            assert np.array_equal(ref.s_out.sent[-1], new.s_out.sent[-1])


# ------------------------------------------------- full Lava networks
T1, T2 = 7, 5


def _run_net(exception_map: ty.Optional[dict], seed: int) \
        -> ty.List[np.ndarray]:
    """Source -> Conv -> LIF -> Dense -> LIFReset -> Dense -> LIF4 and
    Source -> grouped graded Conv -> LIF -> Sparse -> LIF4, plus a graded
    Dense; Var.set between the two runs."""
    rng = np.random.default_rng(seed)
    steps = T1 + T2
    spikes = Source(data=(rng.random((9, 7, 2, steps)) < 0.4).astype(np.int32))
    graded = Source(data=rng.integers(-120, 120, (6, 8, 4, steps)).astype(np.int32))
    conv1 = Conv(weight=rng.integers(-60, 100, (4, 3, 2, 2)), input_shape=(9, 7, 2),
                 padding=(1, 0), stride=(2, 1))
    lif1 = LIF(shape=conv1.output_shape, du=300, dv=200, vth=20,
               bias_mant=rng.integers(-3, 5, conv1.output_shape), bias_exp=2)
    n1 = int(np.prod(conv1.output_shape))
    dense = Dense(weights=rng.integers(-50, 80, (6, n1)), weight_exp=-1)
    lif2 = LIFReset(shape=(6,), du=100, dv=0, vth=10, reset_interval=5)
    conv2 = Conv(weight=rng.integers(-9, 9, (6, 2, 3, 2)), input_shape=(6, 8, 4),
                 padding=1, dilation=(1, 2), groups=2, num_message_bits=8)
    lif3 = LIF(shape=conv2.output_shape, du=50, dv=4095, vth=30)
    n3 = int(np.prod(conv2.output_shape))
    w_sp = rng.integers(-40, 60, (5, n3)) * (rng.random((5, n3)) < 0.3)
    sparse = Sparse(weights=csr_matrix(w_sp))
    lif4 = LIF(shape=(5,), du=0, dv=1000, vth=3, bias_mant=2)
    dense_g = Dense(weights=rng.integers(-20, 20, (3, 6 * 8 * 4)),
                    num_message_bits=8, weight_exp=2)
    lif5 = LIF(shape=(3,), du=4000, dv=10, vth=100)
    # Joins the two halves into one graph (Lava runs connected processes).
    dense_j = Dense(weights=rng.integers(-5, 15, (5, 6)))
    sinks = {lif1: None, lif2: None, lif3: None, lif4: None, lif5: None}
    spikes.s_out.connect(conv1.s_in)
    conv1.a_out.connect(lif1.a_in)
    lif1.s_out.flatten().connect(dense.s_in)
    dense.a_out.connect(lif2.a_in)
    graded.s_out.connect(conv2.s_in)
    conv2.a_out.connect(lif3.a_in)
    lif3.s_out.flatten().connect(sparse.s_in)
    sparse.a_out.connect(lif4.a_in)
    lif2.s_out.connect(dense_j.s_in)
    dense_j.a_out.connect(lif4.a_in)
    graded.s_out.flatten().connect(dense_g.s_in)
    dense_g.a_out.connect(lif5.a_in)
    for lif in sinks:
        sinks[lif] = Sink(shape=lif.s_out.shape, buffer=steps)
        lif.s_out.connect(sinks[lif].a_in)
    cfg = Loihi2SimCfg(select_tag="fixed_pt",
                       exception_proc_model_map=exception_map)
    try:
        spikes.run(condition=RunSteps(num_steps=T1), run_cfg=cfg)
        # Cached weight matrices / biases must follow Var.set.
        conv1.weight.set(rng.integers(-60, 100, (4, 3, 2, 2)))
        conv2.weight.set(rng.integers(-9, 9, (6, 2, 3, 2)))
        dense.weights.set(rng.integers(-50, 80, (6, n1)))
        lif1.bias_mant.set(rng.integers(-8, 8, conv1.output_shape))
        spikes.run(condition=RunSteps(num_steps=T2), run_cfg=cfg)
        used = {type(p): p.model_class for p in (conv1, dense, sparse, lif1, lif2)}
        if exception_map is not None:
            assert used == exception_map
        return [s.data.get() for s in sinks.values()] + [lif1.v.get(), lif3.u.get()]
    finally:
        spikes.stop()


@pytest.mark.parametrize("seed", [0, 1])
def test_lava_network_fast_models_bit_exact(seed: int) -> None:
    stock = _run_net(None, seed)
    fast = _run_net(fast_exception_map(), seed)
    for i, (a, b) in enumerate(zip(stock, fast)):
        assert np.array_equal(a, b), i
    assert all(s.any() for s in stock[:5]), "every layer should spike"
