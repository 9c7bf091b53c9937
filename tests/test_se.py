"""SE gating: real gates (not constant), it matters, and its integer maths is the intended SE."""
from __future__ import annotations

import numpy as np
import torch

from conftest import make_model
from lava_allnet import fixed_point as fx
from lava_allnet.config import get_model_config
from lava_allnet.model import SEBlock, build_model
from netx import format as nf
from netx.export import export


def _gates(net, x):
    gates = {}
    h = x
    with torch.no_grad():
        for name, block in net.blocks.items():
            if isinstance(block, SEBlock):
                h, _a1, _rows, gate = block(h)
                gates[name] = gate
            elif name == "fc":
                break
            else:
                h = block(h, net.time_steps)[0]
    return gates


def test_gate_depends_on_the_image(synth_images):
    images, _ = synth_images
    net = make_model(True, calib=images[:16])
    gates = _gates(net, net.encode(torch.from_numpy(images[:8])))
    assert gates
    for name, g in gates.items():  # (N, T, C), integer levels in [0, G]
        per_image = g.float().mean(dim=1)
        assert g.min() >= 0 and g.max() <= net.blocks[name].fixed.gate_levels
        assert torch.unique(per_image, dim=0).shape[0] > 1, f"{name}: same gate for every image"
        assert g.float().std() > 0


def test_removing_se_changes_the_outputs(synth_images):
    images, _ = synth_images
    with_se = make_model(True, calib=images[:16])
    x = with_se.encode(torch.from_numpy(images[:8]))
    # same conv/fc weights, SE removed: gated layers get plain spikes instead
    without = make_model(False)
    state = {k: v for k, v in with_se.state_dict().items() if not k.startswith("blocks.se")}
    without.load_state_dict(state, strict=False)
    with torch.no_grad():
        a = with_se(x, record=True)
        b = without(x, record=True)
    assert not torch.equal(a.class_counts, b.class_counts)
    assert not torch.equal(a.stage_counts["conv3"], b.stage_counts["conv3"])


def test_integer_gate_matches_real_valued_se():
    """The quantised gate is the float SE gate clamp(w2 relu(w1 mean + b1) + b2, 0, 1) up to rounding."""
    torch.manual_seed(1)
    c, h, w, t = 16, 8, 8, 5
    block = SEBlock(c, 4, h, w, 64)
    spikes = (torch.rand(3, t, c, h, w) < 0.3).float()  # time-major
    _, _, _, gate = block(spikes)
    q = lambda v: fx.quantize_weight(v)  # noqa: E731
    mean = spikes.mean(dim=(3, 4))  # (N, T, C)
    b1 = block.fixed.bias_mantissa(block.b1, 1) * 2**block.fixed.bias1_exp / 2**block.fixed.hidden_bits
    b2 = block.fixed.bias_mantissa(block.b2, 2) * 2**block.fixed.bias2_exp / 64
    a1 = torch.relu(mean @ q(block.w1).t() + b1)
    real = torch.clamp(a1 @ q(block.w2).t() + b2, 0, 1)
    err = (gate.float() / 64 - real).abs().max()
    assert err <= 2.5 / 64, err  # two floors of at most one level each


def test_default_model_size_budget(tmp_path):
    cfg = get_model_config("neurallnet")
    net = build_model(cfg)
    assert 250_000 <= net.num_parameters() <= 350_000
    assert sum(cfg.se) >= 2
    path = tmp_path / "default.net"
    export(net, path)
    assert path.stat().st_size <= 1.35e6
    spec = nf.read(path)
    assert sum(isinstance(l, nf.SESpec) for l in spec.layers) == sum(cfg.se)
    assert build_model(cfg.without_se()).num_parameters() < net.num_parameters()


def test_fast_path_equals_lava_dl_stock_path(synth_images):
    """Our time-major conv2d + C++ CUBA path gives exactly lava-dl's spikes (conv3d + stock dynamics)."""
    from lava_allnet.model import reference_forward
    from lava_allnet.kernels import fast_cuba

    images, _ = synth_images
    net = make_model(True, calib=images[:16])
    x = net.encode(torch.from_numpy(images[:6]))
    with torch.no_grad():
        ours = net(x).class_counts
        was = fast_cuba.is_installed()
        fast_cuba.uninstall()
        try:
            stock = reference_forward(net, x)
        finally:
            if was:
                fast_cuba.install()
    assert ours.sum() > 0
    assert torch.equal(ours, stock)
