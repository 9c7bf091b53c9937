"""The command line: complete help, JSON output, one-line errors with exit code 2."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lava_allnet.cli import app

EXE = str(Path(sys.executable).parent / "lava-allnet")
COMMANDS = ["train", "export", "soup", "retime", "run", "info", "verify", "profile", "map", "evaluate", "robustness",
            "explain", "demo", "models", "data synth"]


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    r = CliRunner().invoke(app, [*command.split(), "--help"])
    assert r.exit_code == 0, r.output
    assert "Usage" in r.output


def test_every_command_and_parameter_is_documented():
    import typer

    root = typer.main.get_command(app)

    def walk(cmd, path):
        assert (cmd.help or "").strip(), f"{path}: no help text"
        for sub_name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, f"{path} {sub_name}")
        for p in cmd.params:
            if p.name in ("help",):
                continue
            assert (getattr(p, "help", None) or "").strip(), f"{path}: parameter {p.name} has no help"

    walk(root, "lava-allnet")


def test_top_level_help_lists_commands():
    r = CliRunner().invoke(app, ["--help"])
    for c in ("train", "export", "run", "info", "verify", "profile", "map", "data"):
        assert c in r.output


def test_run_json_fields(se_model_file, synth_dir):
    files = sorted((synth_dir / "Pro").glob("*.png"))[:2]
    r = cli("run", str(se_model_file), *map(str, files), "--backend", "torch", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # nothing but JSON on stdout
    assert set(doc) >= {"model", "backend", "time_steps", "class_names", "n_images", "accuracy", "results", "skipped", "timing", "state_range_violations"}
    assert doc["state_range_violations"] == 0  # the small calibrated model stays in range
    assert doc["n_images"] == 2 and doc["backend"] == "torch"
    res = doc["results"][0]
    assert set(res) >= {"path", "prediction", "predicted_index", "class_counts", "layer_counts", "label", "correct"}
    assert res["label"] == "Pro"
    assert set(res["class_counts"]) == set(doc["class_names"])
    assert "conv1" in res["layer_counts"] and "se2.scale" in res["layer_counts"]


def test_verify_passes_and_reports_layers(se_model_file, synth_dir):
    r = cli("verify", str(se_model_file), str(synth_dir / "Early"), "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["identical"] and all(l["equal"] for l in doc["layers"])


@pytest.mark.parametrize(
    "args,message",
    [
        (["run", "MODEL", "/no/such/image.png", "--backend", "torch"], "no such file or folder"),
        (["info", "/no/such/model.net"], "no such model file"),
        (["run", "MODEL", "IMAGE", "--backend", "loihi2"], "lava-loihi"),
        (["run", "MODEL", "IMAGE", "--backend", "gpu"], "unknown backend 'gpu' (--backend/-b); choose one of sim, sim-float, torch, loihi2"),
        (["evaluate", "MODEL", "DIR", "--backend", "sim-float"], "unknown backend 'sim-float' (--backend/-b); choose one of sim, torch"),
        (["robustness", "MODEL", "DIR", "-b", "loihi2"], "choose one of torch, sim"),
        (["evaluate", "MODEL", "DIR", "--subset", "everything"], "unknown subset 'everything' (--subset); choose one of test, val, train"),
        (["profile", "MODEL", "IMAGE", "--target", "loihi3"], "unknown target 'loihi3' (--target); choose one of loihi1, loihi2"),
        (["profile", "MODEL", "IMAGE", "--backend", "sim-float"], "choose one of sim, torch, loihi2"),
        (["map", "MODEL", "--target", "truenorth"], "unknown target 'truenorth'"),
        (["run", "MODEL", "IMAGE", "--workers", "0"], "invalid value for --workers"),
        (["export", "/no/such/run", "--out", "x.net"], "no such run directory"),
        (["soup", "/no/such/run", "/no/such/run2", "--out", "x"], "no such run directory"),
        (["soup", "/no/such/run", "--out", "x"], "at least two"),
        (["retime", "MODEL", "--time-steps", "8", "--out", "MODEL"], "is the input file"),
        (["retime", "/no/such/model.net", "--time-steps", "8", "--out", "x.net"], "no such model file"),
        (["train"], "give --recipe FILE"),
        (["train", "--recipe", "/no/such/recipe.toml"], "cannot read"),
        (["train", "--resume", "/no/such/run", "--recipe", "x.toml"], "give no --recipe or --set"),
    ],
)
def test_expected_failures_are_one_line_exit_2(args, message, se_model_file, synth_dir):
    image = str(sorted((synth_dir / "Pro").glob("*.png"))[0])
    places = {"MODEL": str(se_model_file), "IMAGE": image, "DIR": str(synth_dir)}
    args = [places.get(a, a) for a in args]
    r = cli(*args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr


def test_se_layers_sets_the_gates_and_names_the_config():
    from lava_allnet.config import get_model_config

    cfg = get_model_config("neurallnet")
    every = cfg.with_se([5, 1, 2, 3, 4])
    assert every.se == (True,) * 5 and every.name == "neurallnet-se12345"
    assert cfg.with_se([2]).se == (False, True, False, False, False)
    assert cfg.with_se([3, 4, 5]) == cfg  # the config's own gates: unchanged, name included
    bare = cfg.without_se()
    assert bare.name == "neurallnet-nose" and not any(bare.se) and bare.without_se() == bare


def test_version_completion_and_choices_in_help():
    from lava_allnet import __version__

    r = cli("--version")
    assert r.returncode == 0 and r.stdout == f"lava-allnet {__version__}\n", (r.stdout, r.stderr)
    top = CliRunner().invoke(app, ["--help"]).output
    assert "--version" in top and "--install-completion" in top
    for command, shown in [("run", "sim|sim-float|torch|loihi2"), ("evaluate", "sim|torch"), ("evaluate", "test|val|train"),
                           ("robustness", "torch|sim"), ("profile", "sim|torch|loihi2"), ("profile", "loihi1|loihi2"),
                           ("map", "loihi1|loihi2")]:
        assert shown in CliRunner().invoke(app, [command, "--help"]).output, (command, shown)
    assert "faster" in CliRunner().invoke(app, ["run", "--help"]).output


def test_shell_completion_offers_the_choices():
    import os

    env = {**os.environ, "_LAVA_ALLNET_COMPLETE": "complete_bash", "COMP_WORDS": "lava-allnet run x --backend s",
           "COMP_CWORD": "4"}
    r = subprocess.run([EXE], capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0 and r.stdout.split() == ["sim", "sim-float"], (r.stdout, r.stderr)


def test_missing_arguments_keep_the_usage_message():
    r = cli("evaluate")
    assert r.returncode == 2 and "Usage: lava-allnet evaluate" in r.stderr and "Missing argument" in r.stderr


def test_debug_shows_the_traceback():
    r = cli("--debug", "info", "/no/such/model.net")
    assert r.returncode != 0 and "Traceback" in r.stderr
