"""Recipe files: resolved, checked and overridden before anything trains; the CLI stays small."""
from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from lava_allnet.errors import AllnetError
from lava_allnet.frontend import EXACT_OFFSET_BOUND, OFFSET_BOUND
from training import recipe as rc

ROOT = Path(__file__).resolve().parent.parent
EXE = str(Path(sys.executable).parent / "lava-allnet")


def _cli(*args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300)


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "r.toml"
    p.write_text(text)
    return p


def test_train_help_lists_at_most_twelve_options():
    r = _cli("train", "--help")
    assert r.returncode == 0
    options = re.findall(r"^\s+(?:-\w, )?(--[\w-]+)", r.stdout, flags=re.M)
    assert "--recipe" in options and "--set" in options and "--print-recipe" in options
    assert len(options) <= 12, options


def test_shipped_recipes_resolve_and_the_aria_recipe_has_the_shipped_models_stages():
    for name in ("demo", "neurallnet-aria", "neurallnet-aria-v2", "neurallnet-aria-v2-spiking"):
        r = rc.load(ROOT / "recipes" / f"{name}.toml")
        assert r["name"] == name
    spiking = rc.load(ROOT / "recipes" / "neurallnet-aria-v2-spiking.toml")
    v2 = rc.compile_stage(spiking["stages"][1], 2, run_dir=Path("/r"), previous=Path("/r/1"))[1]
    assert v2.rate_layers == ("conv1",) and v2.rate_weight == 1.0 and v2.rate_max == 0.02
    # the graded v2: two stages from a teacher with the spiking v2's keys but the front end's exact
    # offset and impulse correction; the second (the model) under blur draws to sigma 2
    graded = rc.load(ROOT / "recipes" / "neurallnet-aria-v2.toml")
    assert [st["name"] for st in graded["stages"]] == ["graded", "blur"]
    for i, stage in enumerate(graded["stages"]):
        g = rc.compile_stage(stage, i + 1, run_dir=Path("/r"), previous=Path("/r/1") if i else None)[1]
        assert g.family == "graded" and g.init_teacher and g.graded_threshold == 0.75
        assert stage["data"] == spiking["stages"][0]["data"]
        # a 90-epoch teacher held to answer alike under two draws and to the stained cells (fifty-sixth
        # amendment, recipe C01T), and both stages distilled from it
        assert stage["teacher"] == {**spiking["stages"][0]["teacher"], "epochs": 90, "consistency": 1.0,
                                    "cells": 0.1}
        assert (g.teacher_consistency, g.teacher_cells, g.distill_weight, g.distill_temperature) == (1.0, 0.1, 0.5, 2.0)
        # and held to the teacher's hidden activations (forty-seventh amendment, recipe Y)
        assert g.activations_weight == 4.0
        # and the background draws: 30% of the images become cells on black, teacher included, half
        # of those cells recoloured
        assert {**stage["augment"], "blur": 1.0, "background": 0.0, "background_black": 0.5,
                "background_recolour": 0.0} == spiking["stages"][0]["augment"]
        a = stage["augment"]
        assert (a["background"], a["background_black"], a["background_recolour"]) == (0.3, 1.0, 0.5)
        assert g.photometric().background_recolour == 0.5
        assert g.average_from == 16  # each graded stage keeps the running mean of its epochs 16-30
        fe, fe_spiking = stage["frontend"], spiking["stages"][0]["frontend"]
        assert (fe["offset_bound"], fe_spiking["offset_bound"]) == (EXACT_OFFSET_BOUND, OFFSET_BOUND)
        assert (fe["impulse"], fe_spiking["impulse"]) == (90, 0)
        assert fe["exclude_black"] and not fe_spiking["exclude_black"]
        assert {**fe, "offset_bound": OFFSET_BOUND, "impulse": 0, "exclude_black": False} == fe_spiking
    assert [st["augment"]["blur"] for st in graded["stages"]] == [1.0, 2.0]
    g = rc.compile_stage(graded["stages"][0], 1, run_dir=Path("/r"))[1]
    assert (g.batch_size, g.seed, g.threads) == (16, 0, 2)
    # conv1's threshold 20 (its biases fit Lava's range); every later layer's as in the default config
    v2_model = rc.model_config(spiking["stages"][0])
    assert v2_model.layer_thresholds() == {"conv1": 20.0, "conv2": 1.25, "conv3": 1.25, "conv4": 80.0, "conv5": 80.0,
                                           "fc": 80.0}
    aria = rc.load(ROOT / "recipes" / "neurallnet-aria.toml")
    stages = aria["stages"]
    assert [s["name"] for s in stages] == ["scratch", "finetune", "distill", "distill2", "biases"]
    assert [s["schedule"]["epochs"] for s in stages] == [20, 50, 36, 50, 20]
    assert [s["schedule"]["lr"] for s in stages] == [3e-3, 2e-3, 1.5e-3, 1e-3, 5e-4]
    assert [s["losses.distill"]["weight"] for s in stages] == [0.0, 0.0, 0.5, 0.7, 0.7]
    assert [s["schedule"]["threads"] for s in stages] == [2, 2, 2, 2, 1]
    assert [s["schedule"]["seed"] for s in stages] == [0, 0, 0, 0, 23]
    last = stages[-1]
    assert last["schedule"]["init"] == "previous-export"
    assert last["biases"] == {"means": "keep", "learn": True, "adam_eps": 1e-20}
    assert all(s["data"]["split"] == str(ROOT / "models" / "neurallnet-aria.split.json") for s in stages)
    # compiled: stage 2 starts from stage 1's best.pt, stage 5 from stage 4's export, one teacher
    cfgs = [rc.compile_stage(s, i, run_dir=Path("/r"), previous=Path(f"/r/{i - 1}"))[1] for i, s in enumerate(stages, 1)]
    assert cfgs[0].init_from == "" and cfgs[1].init_from == "/r/1/best.pt" and cfgs[4].init_from == "/r/4/model.net"
    assert {c.teacher_path for c in cfgs} == {"../teacher.pt"} and cfgs[4].bias_adam_eps == 1e-20
    assert cfgs[4].norm_means == "keep" and cfgs[4].learn_biases and cfgs[4].range_weight == 1e-3


def test_every_key_is_documented():
    doc = (ROOT / "recipes" / "README.md").read_text()
    for sec, keys in rc.SCHEMA.items():
        for k in keys:
            assert f"`{sec}.{k}`" in doc, f"{sec}.{k}"


def test_set_overrides_every_stage_or_one_and_print_recipe_round_trips(tmp_path):
    p = _write(tmp_path, """
[schedule]
epochs = 3
[[stages]]
name = "a"
[[stages]]
name = "b"
[stages.schedule]
epochs = 7
""")
    r = rc.load(p)
    assert [s["schedule"]["epochs"] for s in r["stages"]] == [3, 7]
    r = rc.load(p, ["schedule.epochs=1"])  # wins over stage tables too
    assert [s["schedule"]["epochs"] for s in r["stages"]] == [1, 1]
    r = rc.load(p, ["stages.2.schedule.lr=5e-4", "stages.a.augment.flips=false", "data.root=some/dir"])
    assert [s["schedule"]["lr"] for s in r["stages"]] == [3e-3, 5e-4]
    assert [s["augment"]["flips"] for s in r["stages"]] == [False, True]
    assert r["stages"][0]["data"]["root"] == str(Path.cwd() / "some" / "dir")  # --set paths: from the cwd
    text = rc.to_toml(r)
    again = rc.resolve(tomllib.loads(text), "x", tmp_path)
    assert again == r
    out = _cli("train", "--recipe", str(p), "--set", "schedule.epochs=2", "--print-recipe")
    assert out.returncode == 0 and tomllib.loads(out.stdout)["stages"][1]["schedule"]["epochs"] == 2


@pytest.mark.parametrize("text, sets, message", [
    ("[schedule]\nepoch = 3\n", [], "unknown key 'schedule.epoch'"),
    ("[schedul]\nepochs = 3\n", [], "unknown section [schedul]"),
    ("[schedule]\nepochs = \"three\"\n", [], "schedule.epochs = 'three': expected an integer"),
    ("[schedule]\nepochs = 0\n", [], "schedule.epochs 0: at least 1"),
    ("[biases]\nmeans = \"held\"\n", [], "biases.means 'held': one of batch, fixed, keep"),
    ("[biases]\nmeans = \"keep\"\n", [], "biases.means 'keep' keeps the means of the init model: set schedule.init"),
    ("[losses.distill]\nweight = 1.5\n", [], "losses.distill.weight 1.5"),
    ("[model]\nname = \"resnet\"\n", [], "model.name 'resnet'"),
    ("[[stages]]\nschedule = { init = \"previous\" }\n", [], "the first stage has no previous stage"),
    ("colour = 1\n", [], "unknown key 'colour'"),
    ("", ["schedule.epochz=3"], "unknown key 'schedule.epochz'"),
    ("", ["schedule.epochs"], "expected section.key=value"),
    ("", ["augment.flips=maybe"], "augment.flips = 'maybe': expected true or false"),
    ("", ["stages.4.schedule.epochs=1"], "no stage 4"),
    ("[losses.rate]\nlayers = \"conv1\"\n", [], "losses.rate.layers = 'conv1': expected a list of names"),
    ("[model]\nthreshold_gains = [1, 0]\n", [], "model.threshold_gains = [1, 0]: expected a list of positive integers"),
    ("[model]\nthreshold_gains = [1, 4]\n", [], "threshold_gains needs 6 values"),
    ("[model]\nthreshold = -1.0\n", [], "model.threshold -1.0: must be above 0"),
    ("[model]\nthreshold = 0.0001\n", [], "outside Lava's 17-bit threshold range"),
    ("[frontend]\nname = \"reinhard\"\noffset_bound = 0\n", [], "frontend.offset_bound 0: front end offset bound"),
    ("", ["frontend.impulse=255"], "frontend.impulse 255: front end impulse threshold"),
    ("", ["augment.background_black=1.5"], "augment.background_black 1.5: a share in [0, 1]"),
    ("", ["augment.background_recolour=0.5"], "augment.background_recolour 0.5: recolours the background"),
    ("", ["frontend.exclude_black=true"], "frontend.exclude_black True: front end exclude_black needs a colour map"),
])
def test_bad_recipes_are_one_line_errors_naming_the_key(tmp_path, text, sets, message):
    p = _write(tmp_path, text)
    with pytest.raises(AllnetError) as exc:
        rc.load(p, sets)
    assert message in str(exc.value)
    args = [a for s in sets for a in ("--set", s)]
    r = _cli("train", "--recipe", str(p), *args, "--out", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_train_needs_a_recipe_and_resume_takes_the_runs_own(tmp_path):
    r = _cli("train")
    assert r.returncode == 2 and "--recipe" in r.stderr
    r = _cli("train", "--resume", str(tmp_path))
    assert r.returncode == 2 and "nothing to resume" in r.stderr
    r = _cli("train", "--resume", str(tmp_path), "--set", "schedule.epochs=1")
    assert r.returncode == 2 and "recipe.toml" in r.stderr


def test_the_library_layers_do_not_import_training_or_hw_targets():
    bad = []
    for path in (ROOT / "lava_allnet").rglob("*.py"):
        if path.name in ("cli.py", "api.py", "__init__.py") and path.parent == ROOT / "lava_allnet":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"from (training|hw_targets)|import (training|hw_targets)", line):
                bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, bad
