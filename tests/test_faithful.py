"""The Lava simulator (Loihi2SimCfg fixed_pt) and the torch reference agree spike for spike."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import real_images
from hw_targets.inference import Inputs, load_inputs, run_backend
from hw_targets.verify import verify
from netx import format as nf


def _assert_identical(report: dict, spec, n_images: int) -> None:
    """Every value of every stage compared and equal (verify's report)."""
    diffs = [l for l in report["layers"] if not l["equal"]]
    assert not diffs, (report["first_difference"], diffs)
    assert report["identical"] and report["n_images"] == n_images
    for layer in report["layers"]:
        assert layer["values_compared"] == layer["neurons"] * spec.time_steps * n_images, layer


def _inputs(synth_images, extra_real: bool = True) -> Inputs:
    images, paths = synth_images
    imgs, ps = images[:8], [str(p) for p in paths[:8]]
    if extra_real:
        real = real_images(1)  # under CI a missing ../shared fails the session (conftest)
        if real:
            more = load_inputs(real, images.shape[-1], ("Benign", "Early", "Pre", "Pro"))
            imgs = np.concatenate([imgs, more.images])
            ps += [str(p) for p in more.paths]
    return Inputs(imgs, ps, [None] * len(ps), [])


@pytest.mark.parametrize("which", ["se", "nose", "se-all"])
def test_sim_equals_torch_every_layer_and_step(which, se_model_file, nose_model_file, se_all_model_file, synth_images):
    spec = nf.read({"se": se_model_file, "nose": nose_model_file, "se-all": se_all_model_file}[which])
    inputs = _inputs(synth_images)
    assert len(inputs.paths) >= 8
    report = verify(spec, inputs.images)
    _assert_identical(report, spec, len(inputs.paths))
    assert report["overflow"] == 0 and report["predictions_equal"]
    # the comparison is not vacuous: every stage, SE stages included, carried messages
    stages = spec.stage_names()
    assert [l["layer"] for l in report["layers"]] == stages
    if which == "se":
        assert any(s.endswith(".scale") for s in stages)
    if which == "se-all":  # the first conv's gate too: the second conv gets graded input
        assert {"se1.scale", "se2.scale", "se3.scale"} <= set(stages)
    for layer in report["layers"]:
        assert layer["reference_messages"] > 0, layer["layer"]
    # and the run path (counts, predictions) agrees with it
    sim = run_backend(spec, inputs, "sim")
    assert sum(sum(r.class_counts.values()) for r in sim.results) > 0
    assert [r.prediction for r in sim.results] == [p["candidate"] for p in report["predictions"]]


@pytest.mark.parametrize("which", ["se", "se_all"])
def test_stock_process_models_agree_with_fast_ones(which, se_model_file, se_all_model_file, synth_images):
    """The fast process models, the fused SE gate among them, change speed, not a single message
    (stock: every gate as its 13 standard Lava processes with Lava's own models)."""
    spec = nf.read(se_model_file if which == "se" else se_all_model_file)
    inputs = _inputs(synth_images, extra_real=False)
    _assert_identical(verify(spec, inputs.images[:3], reference="sim-stock", candidate="sim"), spec, 3)


def test_the_fast_simulator_runs_each_se_gate_as_one_process(se_all_model_file, tmp_path):
    from netx import build as nb

    spec = nf.read(se_all_model_file)
    gates = sum(isinstance(layer, nf.SESpec) for layer in spec.layers)
    assert gates >= 2
    loihi = nb.build(spec, str(tmp_path / "frames.npy"), 1)
    fused = nb.build(spec, str(tmp_path / "frames.npy"), 1, fused_se=True)
    # 13 processes per gate, and the one always-firing bias neuron they share, become 1 per gate
    assert len(fused.processes) == len(loihi.processes) - 12 * gates - 1
    assert [(s.name, s.shape, s.depth) for s in fused.stages] == [(s.name, s.shape, s.depth) for s in loihi.stages]


def test_float_simulator_runs_the_same_graph_approximately(se_model_file, synth_images):
    """sim-float: the same network in real units (no integer rounding): close, not identical."""
    spec = nf.read(se_model_file)
    inputs = _inputs(synth_images, extra_real=False)
    inputs = Inputs(inputs.images[:3], inputs.paths[:3], [None] * 3, [])
    fixed = run_backend(spec, inputs, "sim")
    flt = run_backend(spec, inputs, "sim-float")
    assert set(flt.stage_names) == set(fixed.stage_names)
    np.testing.assert_array_equal(flt.stage_steps["input"], fixed.stage_steps["input"])
    a, b = fixed.stage_steps["conv1"].sum(), flt.stage_steps["conv1"].sum()
    assert abs(a - b) <= 0.05 * a, (a, b)


def test_default_model_on_the_simulator(tmp_path, synth_images):
    """The full-size NeurALLNet (128 channels, three SE gates) runs on Lava identically to torch."""
    import torch

    from lava_allnet.config import get_model_config
    from lava_allnet.data.synth import CLASS_NAMES, image_rng, render_field
    from lava_allnet.model import build_model
    from netx.export import export

    cfg = get_model_config("neurallnet")
    imgs = np.stack([render_field(image_rng(5, i, i), CLASS_NAMES[i], cfg.input_size) for i in range(2)])
    imgs = imgs.transpose(0, 3, 1, 2).copy()
    torch.manual_seed(0)
    net = build_model(cfg)
    net.calibrate(net.encode(torch.from_numpy(imgs)))
    export(net, tmp_path / "default.net")
    spec = nf.read(tmp_path / "default.net")
    _assert_identical(verify(spec, imgs), spec, 2)


def test_threshold_gains_stay_bit_exact_on_the_simulator(se_model_file, synth_images, tmp_path):
    """A layer at gain g (threshold, weights, bias and states x g) is still exact on Lava."""
    from lava_allnet import fixed_point as fx
    from lava_allnet.config import ModelConfig
    from lava_allnet.model import build_model
    from netx.export import export
    from training.trainer import initial_weights

    base = nf.read(se_model_file)
    gains = (1, 8, 4, 2)
    cfg = ModelConfig.from_dict({**base.model_config, "threshold_gains": gains})
    net = build_model(cfg)
    net.load_state_dict(initial_weights(se_model_file, cfg))
    net.eval()
    path = tmp_path / "gained.net"
    spec = export(net, path)
    weighted = [l for l in spec.layers if isinstance(l, (nf.ConvSpec, nf.DenseSpec))]
    old = [l for l in base.layers if isinstance(l, (nf.ConvSpec, nf.DenseSpec))]
    for g, new, was in zip(gains, weighted, old):
        assert new.neuron.vth_mant == g * was.neuron.vth_mant
        assert np.array_equal(new.weight, g * was.weight)
    assert fx.WEIGHT_MAX >= max(int(np.abs(l.weight).max()) for l in weighted)
    inputs = _inputs(synth_images, extra_real=False)
    report = verify(spec, inputs.images)
    _assert_identical(report, spec, len(inputs.paths))
    assert {l["layer"]: l for l in report["layers"]}[spec.stage_names()[-1]]["reference_messages"] > 0


def test_input_once_is_exact_on_the_simulator_and_pays_for_the_input_once(synth_images, tmp_path):
    """model.input_once: the image is sent at the first step only, into a conv1 whose current holds
    it; torch and Lava agree value for value, and the input's synaptic ops are one pass, not T."""
    import dataclasses

    import torch

    from hw_targets import profile as hp
    from lava_allnet.config import ModelConfig
    from lava_allnet.model import build_model
    from netx.analysis import stage_fanouts
    from netx.export import export

    from conftest import SMALL

    images = synth_images[0][:6]
    cfg = ModelConfig(**SMALL, input_once=True)
    torch.manual_seed(0)
    net = build_model(cfg)
    net.calibrate(net.encode(torch.from_numpy(images)))
    spec = export(net, tmp_path / "once.net")
    spec = nf.read(tmp_path / "once.net")
    assert spec.input.send_once and spec.format_version == 2
    assert spec.layers[1].neuron.i_decay == 1  # conv1's current decays by 1/4096 per step (Lava du = 0)
    report = verify(spec, images)
    _assert_identical(report, spec, len(images))
    assert all(l["reference_messages"] > 0 for l in report["layers"])
    # the same weights with the image re-sent every step: its input synaptic ops are T times as many
    every = build_model(dataclasses.replace(cfg, input_once=False))
    every.load_state_dict(net.state_dict())
    spec_every = export(every, tmp_path / "every.net")
    inputs = Inputs(images, [str(i) for i in range(len(images))], [None] * len(images), [])
    target = hp.load_target("loihi1")
    syn = {}
    for name, s in (("once", spec), ("every", spec_every)):
        run = run_backend(s, inputs, "sim", fanouts=stage_fanouts(s))
        rows = {l["layer"]: l for l in hp.profile(s, run, target)["means"]["layers"]}
        syn[name] = rows["input"]["synaptic_ops"]
        fan = stage_fanouts(s)["input"]
        one_pass = float(np.mean([(fan * (im >> (8 - s.input.message_bits) != 0)).sum() for im in images]))
        assert syn[name] == pytest.approx(one_pass * (1 if name == "once" else s.time_steps)), name
    assert syn["every"] == pytest.approx(spec.time_steps * syn["once"])


def test_a_version_1_file_cannot_carry_a_once_sent_input(se_model_file, tmp_path):
    import h5py

    from lava_allnet.errors import ModelFileError

    path = tmp_path / "bad.net"
    path.write_bytes(se_model_file.read_bytes())
    with h5py.File(path, "r+") as f:
        assert int(f.attrs["format_version"]) == 1
        f["layer"]["0"].create_dataset("sendOnce", data=np.int64(1))
    with pytest.raises(ModelFileError, match="sendOnce' needs format version 2"):
        nf.read(path)
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = 8
    with pytest.raises(ModelFileError, match="reads versions 1, 2, 3, 4, 5, 6, 7\\)"):
        nf.read(path)


def test_rate_calibration_feeds_an_input_once_conv1_as_forward_does(synth_images):
    """calibrate() must drive conv1 with the image at the first step only, as forward() does for
    input_once: calibrated on the held input instead, conv1's held current (decay 1/4096) ramps up
    over T, the weights come out ~T times too small, and the trained network is silent."""
    import torch

    from lava_allnet.config import ModelConfig
    from lava_allnet.model import build_model

    from conftest import SMALL

    x = torch.from_numpy(synth_images[0][:8])
    net = build_model(ModelConfig(**SMALL, input_once=True))
    torch.manual_seed(0)
    rates = net.calibrate(net.encode(x))
    with torch.no_grad():
        out = net(net.encode(x), keep=("conv1",))
    achieved = float((out.activations["conv1"] > 0).float().mean())
    assert rates["conv1"] == pytest.approx(0.1, abs=0.02) and achieved == pytest.approx(rates["conv1"], abs=0.02)
