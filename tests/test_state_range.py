"""Loihi's 24-bit neuron state: SLAYER neither wraps nor saturates, so the torch side checks and penalises it."""
from __future__ import annotations

import torch

from lava_allnet import fixed_point as fx

LIMIT = (1 << (fx.STATE_BITS - 1)) / fx.STATE_SCALE  # the register limit in real state units


def test_range_check_counts_currents_beyond_24_bits():
    inside = torch.full((2, 3), 0.9 * LIMIT)
    assert fx.check_state_range(inside) == 0
    current = inside.clone()
    current[0, 0] = 1.01 * LIMIT
    current[1, 2] = -1.5 * LIMIT
    assert fx.check_state_range(current) == 2


def test_penalty_is_zero_inside_the_margin_and_pushes_states_back():
    small = torch.full((4, 5), 0.99 * fx.STATE_MARGIN * LIMIT, requires_grad=True)
    assert fx.state_range_penalty(small, small).item() == 0.0
    current = torch.tensor([[2.0 * LIMIT, -0.1 * LIMIT]], requires_grad=True)
    voltage = torch.tensor([[0.0, -3.0 * LIMIT]], requires_grad=True)
    p = fx.state_range_penalty(current, voltage)
    assert p.item() > 0
    p.backward()
    assert current.grad[0, 0] > 0 and current.grad[0, 1] == 0  # descent lowers |u| where it is too big
    assert voltage.grad[0, 1] < 0 and voltage.grad[0, 0] == 0


def test_forward_returns_the_penalty_only_when_asked_with_gradients(synth_images):
    from conftest import make_model

    net = make_model(True)
    x = net.encode(torch.from_numpy(synth_images[0][:2]))
    net.train()
    out = net(x, range_penalty=True)
    assert isinstance(out.range_penalty, torch.Tensor) and out.range_penalty.requires_grad
    assert net(x).range_penalty == 0.0  # not asked: no extra pass over the states
    net.eval()
    with torch.no_grad():
        assert net(x, range_penalty=True).range_penalty == 0.0


def test_fused_penalty_equals_the_torch_formula_in_value_and_gradient():
    from lava_allnet.kernels import fast_cuba

    scale = fx.STATE_SCALE / float(1 << (fx.STATE_BITS - 1))
    g = torch.Generator().manual_seed(0)
    for shape in [(3,), (2, 5, 7), (4, 3, 8, 9, 9), (70_001,)]:  # the last spans several parallel chunks
        x = (torch.randn(shape, generator=g) * LIMIT).requires_grad_()
        ref_x = x.detach().clone().requires_grad_()
        got = fast_cuba.range_penalty(x, scale, fx.STATE_MARGIN)
        ref = torch.relu(ref_x.abs() * scale - fx.STATE_MARGIN).square().sum()
        assert ref.item() > 0
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
        (3 * got).backward()
        (3 * ref).backward()
        torch.testing.assert_close(x.grad, ref_x.grad, rtol=1e-5, atol=1e-7)
    inside = (torch.rand(100, generator=g) * 0.4 * LIMIT).requires_grad_()
    p = fast_cuba.range_penalty(inside, scale, fx.STATE_MARGIN)
    assert p.item() == 0.0
    (p + inside.sum()).backward()  # a state in range gets no push from the penalty
    assert torch.equal(inside.grad, torch.ones(100))
