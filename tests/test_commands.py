"""Every command runs for real and its output is checked; refusals exit 2 with one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from netx import format as nf

EXE = str(Path(sys.executable).parent / "lava-allnet")


def _cli(*args, timeout=600):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _refused(r, *words):
    """Exit 2 with exactly one line on stderr, `error: ...`, naming these words."""
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_data_synth_writes_the_seeded_images(tmp_path):
    r = _cli("data", "synth", "--out", tmp_path / "a", "--per-class", 2, "--size", 48, "--seed", 1)
    assert r.returncode == 0, r.stderr
    files = sorted((tmp_path / "a").rglob("*.png"))
    assert [f.parent.name for f in files] == ["Benign"] * 2 + ["Early"] * 2 + ["Pre"] * 2 + ["Pro"] * 2
    assert all(Image.open(f).size == (48, 48) and Image.open(f).mode == "RGB" for f in files)
    assert _cli("data", "synth", "--out", tmp_path / "b", "--per-class", 2, "--size", 48, "--seed", 1).returncode == 0
    assert all(f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes() for f in files)
    assert _cli("data", "synth", "--out", tmp_path / "c", "--per-class", 2, "--size", 48, "--seed", 2).returncode == 0
    assert any(f.read_bytes() != (tmp_path / "c" / f.relative_to(tmp_path / "a")).read_bytes() for f in files)


def test_models_lists_every_registered_config():
    from lava_allnet.config import MODELS

    r = _cli("models")
    assert r.returncode == 0, r.stderr
    rows = {line.split("│")[1].strip(): line for line in r.stdout.splitlines() if line.count("│") > 3}
    for name, cfg in MODELS.items():
        assert name in rows, name
        cells = [c.strip() for c in rows[name].split("│")[1:-1]]
        assert cells[1:3] == [str(cfg.input_size), str(cfg.time_steps)], cells


def test_export_writes_the_last_stages_best_checkpoint(tmp_path, synth_dir):
    from training.trainer import load_trained

    recipe = Path(__file__).resolve().parent.parent / "recipes" / "demo.toml"
    sets = ["data.root=" + str(synth_dir), "model.name=neurallnet-tiny", "model.input_size=32", "model.time_steps=4",
            "schedule.epochs=1", "schedule.batch_size=8"]
    r = _cli("train", "--recipe", recipe, *[a for s in sets for a in ("--set", s)], "--out", tmp_path / "run")
    assert r.returncode == 0, r.stderr
    r = _cli("export", tmp_path / "run", "--out", tmp_path / "x.net")
    assert r.returncode == 0, r.stderr
    spec = nf.read(tmp_path / "x.net")
    assert spec.time_steps == 4 and list(spec.class_names) == ["Benign", "Early", "Pre", "Pro"]
    # the same network the run directory's own export holds, and the same as the trained torch model
    ours = nf.read(tmp_path / "run" / "model.net")
    for a, b in zip(spec.layers, ours.layers):
        for k in ("weight", "bias"):
            if getattr(a, k, None) is not None:
                assert np.array_equal(getattr(a, k), getattr(b, k)), (a.name, k)
    net = load_trained(tmp_path / "run" / "1-train")
    conv1 = next(l for l in spec.layers if isinstance(l, nf.ConvSpec))
    from lava_allnet import fixed_point as fx

    torch_weight = fx.weight_mantissa(net.blocks["conv1"].synapse.weight.detach())  # SLAYER's (O, I, kH, kW, 1)
    assert np.array_equal(conv1.weight, torch_weight.reshape(conv1.weight.shape))
    _refused(_cli("export", tmp_path / "nothing", "--out", tmp_path / "y.net"), "no such run directory")


def test_retime_changes_only_the_steps(se_model_file, tmp_path):
    r = _cli("retime", se_model_file, "--time-steps", 9, "--out", tmp_path / "t9.net")
    assert r.returncode == 0, r.stderr
    old, new = nf.read(se_model_file), nf.read(tmp_path / "t9.net")
    assert (old.time_steps, new.time_steps) == (6, 9)
    for a, b in zip(old.layers, new.layers):
        for k in ("weight", "bias", "weight1", "weight2"):
            if getattr(a, k, None) is not None:
                assert np.array_equal(getattr(a, k), getattr(b, k)), (a.name, k)
    _refused(_cli("retime", se_model_file, "--time-steps", 9, "--out", se_model_file), "is the input file")


def test_soup_averages_runs_and_refuses_mismatched_ones(tmp_path, synth_dir):
    import torch

    from lava_allnet.config import get_model_config
    from training.checkpoint import load_torch
    from training.config import TrainConfig
    from training.trainer import train

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    train(tmp_path / "start", cfg, TrainConfig(epochs=1, batch_size=8, seed=3), data_dir=synth_dir, show_progress=False)
    for seed in (4, 5):
        tc = TrainConfig(epochs=1, batch_size=8, seed=seed, lr=0.05, init_from=str(tmp_path / "start" / "best.pt"),
                         split_from=str(tmp_path / "start" / "split.json"))
        train(tmp_path / f"r{seed}", cfg, tc, data_dir=synth_dir, show_progress=False)
    r = _cli("soup", tmp_path / "r4", tmp_path / "r5", "--out", tmp_path / "soup", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert [x["run"] for x in summary["runs"]] == [str(tmp_path / "r4"), str(tmp_path / "r5")]
    a, b = (load_torch(tmp_path / f"r{s}" / "best.pt")["model"] for s in (4, 5))
    mean = load_torch(tmp_path / "soup" / "best.pt")["model"]
    key = "blocks.conv2.synapse.weight"
    assert torch.allclose(mean[key], (a[key] + b[key]) / 2) and not torch.equal(a[key], b[key])
    assert _cli("export", tmp_path / "soup", "--out", tmp_path / "soup.net").returncode == 0
    train(tmp_path / "other", cfg, TrainConfig(epochs=1, batch_size=8, seed=9), data_dir=synth_dir, show_progress=False)
    _refused(_cli("soup", tmp_path / "r4", tmp_path / "other", "--out", tmp_path / "bad"), "split")


def test_profile_counts_and_writes_its_files(se_model_file, synth_images, tmp_path):
    paths = [str(p) for p in synth_images[1][:2]]
    r = _cli("profile", se_model_file, *paths, "--backend", "torch", "--json", "--out", tmp_path / "prof")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    layers = report["means"]["layers"]
    assert set(nf.read(se_model_file).stage_names()) <= {l["layer"] for l in layers}  # plus bias and relay rows
    total = report["means"]["totals"]
    assert total["synaptic_ops"] == pytest.approx(sum(l["synaptic_ops"] for l in layers))
    assert total["synaptic_ops"] > 0 and all(l["messages"] >= 0 for l in layers)
    written = {Path(p).name for p in report["written"]}
    assert {"profile.csv", "profile.json"} <= written and any(n.endswith(".png") for n in written)
    assert all((tmp_path / "prof" / n).stat().st_size > 0 for n in written)
    _refused(_cli("profile", tmp_path / "none.net", *paths), "none.net")


def test_map_reports_cores_per_layer(se_model_file):
    info = json.loads(_cli("info", se_model_file, "--json").stdout)
    for target in ("loihi1", "loihi2"):
        r = _cli("map", se_model_file, "--target", target, "--json")
        assert r.returncode == 0, r.stderr
        m = json.loads(r.stdout)
        assert m["total_cores"] == sum(l["cores"] for l in m["layers"]) > 0
        assert m["fits_one_chip"] == (not m["problems"]) and m["total_cores"] <= m["chip_cores"] or m["problems"]
        neurons = {l["layer"]: l["neurons"] for l in m["layers"]}
        for l in info["layers"]:
            if l["name"] in neurons:
                assert neurons[l["name"]] == l["neurons"], l["name"]
