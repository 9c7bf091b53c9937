"""Profiling and mapping: counts equal across backends, hand-computable totals, outputs written."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hw_targets import profile as hp
from hw_targets.mapping import map_network
from hw_targets.inference import Inputs, run_backend
from netx import analysis
from netx import format as nf


def _inputs(images, n=3):
    return Inputs(images[:n], [f"img{i}" for i in range(n)], [None] * n, [])


def test_profile_counts_equal_on_sim_and_torch(se_model_file, synth_images):
    spec = nf.read(se_model_file)
    fan = analysis.stage_fanouts(spec)
    inputs = _inputs(synth_images[0], 3)
    a = hp.profile(spec, run_backend(spec, inputs, "torch", fanouts=fan), hp.load_target("loihi1"))
    b = hp.profile(spec, run_backend(spec, inputs, "sim", fanouts=fan), hp.load_target("loihi1"))
    for ia, ib in zip(a["images"], b["images"]):
        for la, lb in zip(ia["layers"], ib["layers"]):
            for key in ("messages", "synaptic_ops", "neuron_updates", "active_neurons", "per_step", "energy_pj"):
                assert la[key] == lb[key], (la["layer"], key)
        assert ia["totals"]["synaptic_ops"] > 0


def test_profile_without_images_is_the_same_report_and_its_means_are_the_images(se_model_file, synth_images):
    """A plain profile (no --json, no --out) keeps no per-image entries; every figure is the same."""
    spec = nf.read(se_model_file)
    run = run_backend(spec, _inputs(synth_images[0], 4), "torch", fanouts=analysis.stage_fanouts(spec))
    full = hp.profile(spec, run, hp.load_target("loihi1"))
    lean = hp.profile(spec, run, hp.load_target("loihi1"), images=False)
    assert "images" not in lean and lean == {k: v for k, v in full.items() if k != "images"}
    ims = full["images"]
    assert len(ims) == full["n_images"] == 4
    for key in ("messages", "synaptic_ops", "neuron_updates", "active_neurons", "energy_pj"):
        per_image = [sum(l[key] for l in im["layers"]) for im in ims]
        assert [im["totals"][key] for im in ims] == per_image
        assert full["means"]["totals"][key] == pytest.approx(np.mean(per_image), rel=1e-12)
        if key in full["totals"]:  # the sums over images (active neurons have none)
            assert full["totals"][key] == pytest.approx(sum(per_image), rel=1e-12)
    for j, layer in enumerate(full["means"]["layers"]):
        assert layer["synaptic_ops"] == np.mean([im["layers"][j]["synaptic_ops"] for im in ims])
        assert layer["per_step"] == pytest.approx(np.mean([im["layers"][j]["per_step"] for im in ims], axis=0).tolist())
    assert all(im["totals"]["synaptic_ops_per_ann_mac"] == im["totals"]["synaptic_ops"] / full["ann_macs_per_image"]
               for im in ims)


def _two_layer_spec(tmp_path):
    """input 1x4x4 → conv 2x2x2 (k=3, s=2, p=1) → flatten → dense 2 (population 1, 2 classes)."""
    conv_w = np.full((2, 1, 3, 3), 20, dtype=np.int32)
    layers = [
        nf.InputSpec((1, 4, 4), 6),
        nf.ConvSpec((2, 2, 2), 1, 2, (3, 3), (2, 2), (1, 1), (1, 1), 1, conv_w, nf.NeuronSpec(1024, 128, 80), 6, name="conv1"),
        nf.FlattenSpec(name="flatten"),
        nf.DenseSpec((2,), np.full((2, 8), 40, dtype=np.int32), nf.NeuronSpec(1024, 128, 80), 0, name="fc"),
    ]
    spec = nf.NetworkSpec(layers, ("a", "b"), time_steps=4, population=1)
    path = tmp_path / "two.net"
    nf.write(spec, path)
    return nf.read(path)


def test_synops_and_macs_of_a_hand_built_net(tmp_path):
    spec = _two_layer_spec(tmp_path)
    # ANN MACs: conv 2 outputs x 2x2 positions x (1 in x 3x3) = 72; dense 8 x 2 = 16
    stats = {s.name: s for s in analysis.layer_stats(spec)}
    assert stats["conv1"].ann_macs == 72 and stats["fc"].ann_macs == 16
    assert analysis.totals(analysis.layer_stats(spec))["ann_macs"] == 88
    # conv fan-out per input position (4x4, k3 s2 p1 → 2x2 outputs): rows/cols 0,2 → 1 output,
    # row/col 1 → 2 outputs, 3 → 1 output; times 2 output channels
    fan = analysis.stage_fanouts(spec)
    per_axis = np.array([1, 2, 1, 1])
    np.testing.assert_array_equal(fan["input"][0], 2 * np.outer(per_axis, per_axis))
    assert stats["conv1"].synapses == int(fan["input"].sum())  # = 2 * 25 = 50
    assert stats["conv1"].synapses == 50
    np.testing.assert_array_equal(fan["conv1"], np.full((2, 2, 2), 2))  # each spike → 2 dense outputs
    # an all-bright image: every input message each step drives its fan-out
    img = np.full((1, 1, 4, 4), 255, dtype=np.uint8)
    run = run_backend(spec, Inputs(img, ["x"], [None], []), "sim", fanouts=fan)
    rep = hp.profile(spec, run, hp.load_target("loihi1"))
    rows = {l["layer"]: l for l in rep["images"][0]["layers"]}
    assert rows["input"]["messages"] == 16 * 4
    assert rows["input"]["synaptic_ops"] == 50 * 4
    assert rows["conv1"]["synaptic_ops"] == 2 * rows["conv1"]["messages"]
    assert rows["conv1"]["neuron_updates"] == 8 * 4
    assert rep["ann_macs_per_image"] == 88
    e = hp.load_target("loihi1")["energy_pj"]
    c = rows["conv1"]
    expect = c["synaptic_ops"] * e["synaptic_op"] + c["messages"] * (e["neuron_update_active"] + e["spike_within_tile"]) \
        + (c["neuron_updates"] - c["messages"]) * e["neuron_update_inactive"]
    assert c["energy_pj"] == pytest.approx(expect)


def test_profile_writes_csv_and_pngs(se_model_file, synth_images, tmp_path):
    spec = nf.read(se_model_file)
    run = run_backend(spec, _inputs(synth_images[0], 2), "torch", fanouts=analysis.stage_fanouts(spec))
    rep = hp.profile(spec, run, hp.load_target("loihi2"))
    assert rep["means"]["totals"]["energy_pj"] is None  # no published Loihi 2 per-op energy
    files = hp.write_outputs(rep, tmp_path / "prof")
    names = {f.name for f in files}
    assert {"profile.csv", "spikes_per_layer.png", "activity_over_time.png", "energy_snn_vs_ann.png"} <= names
    for f in files:
        assert f.stat().st_size > 100
    lines = (tmp_path / "prof" / "profile.csv").read_text().splitlines()
    assert len(lines) == 1 + 2 * len(rep["means"]["layers"])


def test_map_reports_cores_for_the_default_model(tmp_path):
    from lava_allnet.config import get_model_config
    from lava_allnet.model import build_model
    from netx.export import export

    path = tmp_path / "d.net"
    export(build_model(get_model_config("neurallnet")), path)
    spec = nf.read(path)
    m2 = map_network(spec, hp.load_target("loihi2"))
    assert m2["total_cores"] > 0 and all(r["cores"] >= 1 for r in m2["layers"])
    assert m2["fits_one_chip"] == (not m2["problems"])
    m1 = map_network(spec, hp.load_target("loihi1"))
    assert not m1["fits_one_chip"]
    assert any("graded spikes" in p for p in m1["problems"])
