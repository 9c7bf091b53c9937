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


def test_training_forward_returns_the_penalty_and_eval_does_not(synth_images):
    from conftest import make_model

    net = make_model(True)
    x = net.encode(torch.from_numpy(synth_images[0][:2]))
    net.train()
    out = net(x)
    assert isinstance(out.range_penalty, torch.Tensor) and out.range_penalty.requires_grad
    net.eval()
    with torch.no_grad():
        assert net(x).range_penalty == 0.0
