"""The fused CUBA layer kernels and the event-driven conv against the unfused torch/SLAYER path."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from lava_allnet import model as M
from lava_allnet.kernels import event_conv, fast_cuba

def _model(images, norm: bool = True) -> M.Network:
    """The tests' small SE net, widened so its last conv is event-driven, calibrated to ~10% spikes."""
    from conftest import SMALL

    from lava_allnet.config import ModelConfig

    torch.manual_seed(0)
    net = M.build_model(ModelConfig(**{**SMALL, "channels": (8, 32, 32), "norm": norm}))
    net.calibrate(net.encode(torch.from_numpy(images[:8])))
    return net


requires_ext = pytest.mark.skipif(not fast_cuba.available(), reason="C++ extension could not be built")
S_SCALE = 1 << 12
DECAY_U, DECAY_V = torch.tensor([1024.0]), torch.tensor([123.0])


def _bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and torch.equal(a.contiguous().view(torch.int32), b.contiguous().view(torch.int32))


@requires_ext
@pytest.mark.parametrize("shape", [(2, 5, 7), (3, 4, 6, 5, 9), (1, 16, 1)])
def test_held_current_equals_the_repeated_input(shape):
    torch.manual_seed(0)
    n, t, *s = shape
    x = (torch.randn(n, *s) * 3).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, sums = fast_cuba.current_tm(x, t, DECAY_U, S_SCALE, time_sums=True)
    ref = fast_cuba.li_dynamics_tm(x_ref.unsqueeze(1).expand(n, t, *s), DECAY_U, S_SCALE)
    assert _bits(y, ref)
    torch.testing.assert_close(sums, ref.detach().sum(1).reshape(n, -1), rtol=1e-6, atol=1e-6)
    g = torch.randn(shape)
    (y * g).sum().backward()
    (ref * g).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-6, atol=1e-6)  # a sum over t in another order


@requires_ext
@pytest.mark.parametrize("shape", [(2, 8, 3, 5, 4), (4, 16, 40)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_voltage_and_spikes_equal_dynamics_then_spike(shape, with_bias):
    torch.manual_seed(1)
    current = (torch.randn(shape) * 2).requires_grad_()
    current_ref = current.detach().clone().requires_grad_()
    bias = (torch.randn(shape[2:]) * 0.3).contiguous() if with_bias else None
    thr, tau, scale = 1.25 + 0.5 / S_SCALE, 1.25, 0.3
    v, s = fast_cuba.voltage_spike_tm(current, None if bias is None else bias.reshape(-1), DECAY_V,
                                      S_SCALE, thr, tau, scale)
    driven = current_ref if bias is None else current_ref - bias
    v_ref = fast_cuba.li_dynamics_tm(driven, DECAY_V, S_SCALE, thr)
    s_ref = fast_cuba.spike_tm(v_ref, thr, tau, scale)
    assert _bits(v, v_ref) and _bits(s, s_ref)
    assert 0 < float(s.detach().sum()) < s.numel()  # resets are exercised
    gs, gv = torch.randn(shape), torch.randn(shape)
    ((s * gs).sum() + (v * gv).sum()).backward()
    ((s_ref * gs).sum() + (v_ref * gv).sum()).backward()
    assert _bits(current.grad, current_ref.grad)


@requires_ext
@pytest.mark.parametrize("norm", [False, True])
def test_fused_network_matches_the_unfused_path(norm, monkeypatch, synth_images):
    """Whole training step: same spikes and loss; gradients equal up to float summation order."""
    net = _model(synth_images[0], norm)
    x = net.encode(torch.from_numpy(synth_images[0][8:12]))
    y = torch.arange(4) % net.num_classes
    base = copy.deepcopy(net.state_dict())

    def step(fused: bool):
        net.load_state_dict(base)
        net.train()
        with monkeypatch.context() as m:
            if not fused:
                m.setattr(fast_cuba, "fused_ok", lambda *a: False)
            out = net(x, range_penalty=True)
            loss = F.cross_entropy(out.class_counts / 10, y) + 1e-3 * out.range_penalty
            net.zero_grad()
            loss.backward()
        return out.class_counts.detach(), {k: p.grad.clone() for k, p in net.named_parameters() if p.grad is not None}

    (c1, g1), (c2, g2) = step(True), step(False)
    assert torch.equal(c1, c2) and float(c1.sum()) > 0
    assert g1.keys() == g2.keys() and len(g1) > 0
    for k in g1:
        torch.testing.assert_close(g1[k], g2[k], rtol=1e-4, atol=1e-6 * float(g2[k].abs().max()) + 1e-12, msg=k)
    net.load_state_dict(base)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x).class_counts, M.reference_forward(net, x))


def test_batch_mean_subtraction_has_autograds_gradient():
    """The non-fused norm (_SubtractBatchMean) equals autograd through x - hook(x.mean) exactly, clamp included."""
    from lava.lib.dl.slayer.neuron import norm as slayer_norm

    torch.manual_seed(3)
    for shape, axis in [((4, 5, 6, 7, 3), -1), ((4, 5, 3, 7, 6), 2), ((4, 5, 3), 2)]:
        n = slayer_norm.MeanOnlyBatchNorm(num_features=shape[axis])
        n.pre_hook_fx = lambda m: torch.clamp(m * 3, -1, 1)  # a clamp that bites: zero gradient there
        x = (torch.randn(shape) * 0.5).requires_grad_()
        out = M._norm_tm(n, x, axis)
        g = torch.randn(shape)
        out.backward(g)
        x2 = x.detach().clone().requires_grad_()
        dims = [d for d in range(len(shape)) if d != axis % len(shape)]
        view = [1] * len(shape)
        view[axis] = shape[axis]
        ref = x2 - n.pre_hook_fx(x2.mean(dims).view(view))
        ref.backward(g)
        assert torch.equal(out, ref) and torch.equal(x.grad, x2.grad)


# --------------------------------------------------------------------------
# event-driven convolution
# --------------------------------------------------------------------------
def _spiky(frames, c, h, w, density, graded=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(frames, c, h, w, generator=g) < density).float()
    if graded:
        x = x * torch.randint(1, 65, x.shape, generator=g).float()
    return x.contiguous(memory_format=torch.channels_last)


def _grid_weight(o, c, k, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-128, 128, (o, c, k, k), generator=g).float() / 32  # SLAYER's 8-bit grid


@requires_ext
@pytest.mark.parametrize(
    "frames,c,o,h,w,k,stride,pad",
    [(8, 32, 64, 16, 16, 3, 2, 1), (3, 40, 24, 9, 7, 3, 1, 1), (2, 64, 20, 8, 8, 3, 2, 1),  # o % 8 != 0: plain loop
     (4, 33, 128, 6, 10, 5, 2, 2), (2, 16, 8, 5, 5, 1, 1, 0), (1, 8, 16, 4, 4, 3, 3, 0)],
)
@pytest.mark.parametrize("graded", [False, True])
def test_event_conv_is_exact_and_its_weight_gradient_close(frames, c, o, h, w, k, stride, pad, graded):
    x = _spiky(frames, c, h, w, 0.12, graded, seed=frames + c)
    wt = _grid_weight(o, c, k, seed=o)
    ref = F.conv2d(x, wt, None, stride, pad)
    got = event_conv.conv2d(x, wt, stride, pad)
    assert torch.equal(got, ref)  # exact: integer inputs, 2^-5 grid weights
    g = torch.randn(ref.shape)
    gw = event_conv.conv2d_weight(x, k, g, stride, pad)
    gw_ref = torch.nn.grad.conv2d_weight(x, wt.shape, g, stride, pad)
    torch.testing.assert_close(gw, gw_ref, rtol=1e-4, atol=1e-4 * float(gw_ref.abs().max()))


def test_event_conv_is_used_only_where_it_pays():
    assert event_conv.worthwhile(_spiky(4, 32, 8, 8, 0.1))
    assert not event_conv.worthwhile(_spiky(4, 32, 8, 8, 0.5))  # dense input: mkldnn wins
    assert not event_conv.worthwhile(_spiky(4, 16, 8, 8, 0.1))  # few channels: few events per pixel
    x = _spiky(2, 32, 8, 8, 0.1)
    w = _grid_weight(16, 32, 3)
    assert event_conv.supported(x, w, (2, 2), (1, 1), (1, 1), 1) == fast_cuba.available()
    assert not event_conv.supported(x.contiguous(), w, (2, 2), (1, 1), (1, 1), 1)  # NCHW
    assert not event_conv.supported(x, w, (2, 2), (1, 1), (2, 2), 1)  # dilation


@requires_ext
def test_network_runs_its_sparse_layers_event_driven(synth_images):
    net = _model(synth_images[0])
    net.train()
    x = net.encode(torch.from_numpy(synth_images[0][8:10]))
    with torch.profiler.profile() as prof:
        out = net(x)
        out.class_counts.sum().backward()
    used = {e.name.split("::")[-1] for e in prof.events() if e.name.startswith("lava_allnet_cuba")}
    assert {"sparse_conv_fwd", "sparse_conv_wgrad", "li_fwd_tm_ex", "li_bwd_tm_sum", "li_bwd_tm_ex"} <= used

