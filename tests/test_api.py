"""The Python API: README examples run, arrays equal files, torch equals sim, the CLI's JSON dicts."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import lava_allnet
from conftest import REPO
from lava_allnet import api, shipped
from lava_allnet.errors import AllnetError, DataError

EXE = str(Path(sys.executable).parent / "lava-allnet")


def _counts(results: list[dict]) -> list[tuple]:
    """What a backend computed for each image (not where the image came from)."""
    return [(r["prediction"], r["predicted_index"], r["class_counts"], r["layer_counts"]) for r in results]


def _readme_api_blocks() -> list[str]:
    text = (REPO / "README.md").read_text()
    assert "\n## Python API\n" in text
    section = text.split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_import_is_light_and_reexports_the_api():
    code = ("import sys, lava_allnet; heavy = [m for m in ('torch', 'lava', 'numpy', 'hw_targets', 'training', "
            "'lava_allnet.api') if m in sys.modules]; print(heavy, lava_allnet.__version__)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("]")[0] == "[", r.stdout  # nothing heavy imported
    assert lava_allnet.load is api.load and lava_allnet.Model is api.Model
    assert lava_allnet.evaluate is api.evaluate and lava_allnet.profile is api.profile
    assert {"load", "evaluate", "profile", "Model"} <= set(dir(lava_allnet))
    with pytest.raises(AttributeError):
        lava_allnet.no_such_thing  # noqa: B018


def test_readme_examples_run(tmp_path, monkeypatch, capsys):
    blocks = _readme_api_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the examples write smears/ in the working directory
    ns: dict = {}
    for block in blocks:
        exec(compile(block, "README.md (Python API)", "exec"), ns)
    assert isinstance(ns["model"], lava_allnet.Model)
    assert ns["report"]["n_images"] == 8 and ns["report"]["backend"] == "torch"
    assert ns["prof"]["n_images"] == 2 and ns["prof"]["target"] == "loihi1"
    assert ns["r"]["path"] == "<array 0>"
    assert capsys.readouterr().out.count("Pro") >= 2


def test_load_defaults_to_the_shipped_model():
    m = lava_allnet.load()
    assert m.path == shipped.default_model() and m.path.is_file()
    assert m.class_names == ["Benign", "Early", "Pre", "Pro"] and m.input_size == 128 and m.time_steps == 16
    assert "neurallnet-aria.net" in repr(m)
    with pytest.raises(AllnetError):
        lava_allnet.load("/no/such/model.net")


def test_predict_on_arrays_equals_predict_on_files(se_model_file, synth_dir):
    files = sorted((synth_dir / "Pro").glob("*.png"))[:2] + sorted((synth_dir / "Early").glob("*.png"))[:1]
    model = lava_allnet.load(se_model_file)
    by_file = model.predict(files)
    assert [r["path"] for r in by_file] == [str(f) for f in files]
    assert [r["label"] for r in by_file] == ["Pro", "Pro", "Early"]
    hwc = [np.asarray(Image.open(f).convert("RGB")) for f in files]  # 64x64: resized to the model's 32
    assert hwc[0].shape == (64, 64, 3)
    by_array = model.predict(hwc)
    assert [r["path"] for r in by_array] == ["<array 0>", "<array 1>", "<array 2>"]
    assert all(r["label"] is None and r["correct"] is None for r in by_array)
    assert _counts(by_array) == _counts(by_file)
    # (3, S, S) at the input size, a 4-D batch, a PIL image and a path, in one call, in order
    from lava_allnet.data.images import load_image

    chw = load_image(files[0], model.input_size)
    mixed = model.predict([chw, np.stack(hwc[1:]), str(files[0]), Image.open(files[2])])
    assert [r["path"] for r in mixed] == ["<array 0>", "<array 1[0]>", "<array 1[1]>", str(files[0]), "<array 3>"]
    assert _counts(mixed) == _counts(by_file[:1] + by_file[1:] + by_file[:1] + by_file[2:])
    # a folder expands to its images (sorted), labelled from the class folder
    folder = model.predict(synth_dir / "Pro")
    assert len(folder) == 6 and all(r["label"] == "Pro" for r in folder)


def test_predict_refuses_what_is_not_an_image(se_model_file, tmp_path):
    model = lava_allnet.load(se_model_file)
    with pytest.raises(DataError, match="uint8"):
        model.predict([np.zeros((40, 40, 3), dtype=np.float32)])
    with pytest.raises(DataError, match="shape"):
        model.predict([np.zeros((40, 40, 5), dtype=np.uint8)])
    with pytest.raises(DataError, match="too small"):
        model.predict([np.zeros((4, 40, 3), dtype=np.uint8)])
    with pytest.raises(DataError, match="give image paths"):
        model.predict([42])
    with pytest.raises(AllnetError, match="unknown backend"):
        model.predict([np.zeros((40, 40, 3), dtype=np.uint8)], backend="gpu")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    good = np.full((40, 40, 3), 200, dtype=np.uint8)
    with pytest.raises(DataError, match="bad.png"):
        model.predict([good, bad])  # strict by default
    run = model.run([good, bad], strict=False)
    assert len(run.results) == 1 and run.skipped and run.skipped[0][0] == str(bad)


def test_torch_and_sim_give_identical_counts(se_model_file, synth_dir):
    files = [sorted((synth_dir / c).glob("*.png"))[0] for c in ("Pre", "Benign")]
    model = lava_allnet.load(se_model_file)
    assert _counts(model.predict(files, backend="sim")) == _counts(model.predict(files, backend="torch"))


def test_torch_and_sim_give_identical_counts_on_the_shipped_model(tmp_path):
    from lava_allnet.data import synth

    synth.generate_dataset(tmp_path, 1, size=128, seed=5, classes=("Early",))
    image = np.asarray(Image.open(tmp_path / "Early" / "Early_00000.png").convert("RGB"))
    model = lava_allnet.load()
    assert _counts(model.predict([image], backend="sim")) == _counts(model.predict([image], backend="torch"))


def _cli_json(*args: str) -> dict:
    r = subprocess.run([EXE, *args, "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _same_report(api_doc: dict, cli_doc: dict) -> None:
    assert cli_doc.pop("written") == []
    assert list(api_doc) == list(cli_doc)  # the same keys in the same order
    for key in api_doc:
        if key != "timing":  # measured, so never equal twice
            assert api_doc[key] == cli_doc[key], key
    assert set(api_doc["timing"]) == set(cli_doc["timing"])


def test_evaluate_returns_the_cli_json(se_model_file, synth_dir):
    doc = lava_allnet.evaluate(se_model_file, synth_dir, backend="torch", resamples=1000, seed=3)
    assert doc["n_images"] == 24 and doc["model"] == str(se_model_file) and doc["data"] == str(synth_dir)
    cli = _cli_json("evaluate", str(se_model_file), str(synth_dir), "--backend", "torch", "--resamples", "1000",
                    "--seed", "3")
    _same_report(json.loads(json.dumps(doc)), cli)
    with pytest.raises(AllnetError, match="unknown backend"):
        lava_allnet.evaluate(se_model_file, synth_dir, backend="sim-float")
    with pytest.raises(AllnetError, match="unknown subset"):
        lava_allnet.evaluate(se_model_file, synth_dir, subset="everything")


def test_profile_returns_the_cli_json(se_model_file, synth_dir):
    model = lava_allnet.load(se_model_file)
    doc = lava_allnet.profile(model, [synth_dir / "Pro"], backend="torch", target="loihi2")
    assert doc["model"] == str(se_model_file) and doc["n_images"] == 6 and doc["target"] == "loihi2"
    cli = _cli_json("profile", str(se_model_file), str(synth_dir / "Pro"), "--backend", "torch", "--target", "loihi2")
    _same_report(json.loads(json.dumps(doc)), cli)
    with pytest.raises(AllnetError, match="unknown target"):
        lava_allnet.profile(model, [synth_dir / "Pro"], target="loihi3")
