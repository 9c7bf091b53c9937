"""The shipped model (models/neurallnet-aria.net): size budget, default of `run`, faithful on Lava."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REAL_DATA, real_images
from hw_targets.inference import DEFAULT_MODEL
from netx import format as nf

EXE = str(Path(sys.executable).parent / "lava-allnet")
needs_real = pytest.mark.skipif(not (REAL_DATA / "original").is_dir(), reason="../shared/data/all-aria not present")


def test_shipped_model_is_present_and_within_budget():
    assert DEFAULT_MODEL.is_file(), "models/neurallnet-aria.net is part of the repository"
    assert DEFAULT_MODEL.stat().st_size <= 1.35e6
    spec = nf.read(DEFAULT_MODEL)
    assert spec.class_names == ("Benign", "Early", "Pre", "Pro")
    r = subprocess.run([EXE, "info", str(DEFAULT_MODEL), "--json"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert 0.25e6 <= info["totals"]["parameters"] <= 0.35e6
    assert any(layer["type"] == "se" for layer in info["layers"])


@needs_real
def test_run_without_a_model_uses_the_shipped_one_and_sim_equals_torch():
    imgs = [str(p) for p in real_images(1)]
    results = {}
    for backend in ("torch", "sim"):
        r = subprocess.run([EXE, "run", *imgs, "--backend", backend, "--json"], capture_output=True, text=True,
                           timeout=300)
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert Path(report["model"]).resolve() == DEFAULT_MODEL.resolve()
        results[backend] = [(x["prediction"], x["layer_counts"]) for x in report["results"]]
    assert results["sim"] == results["torch"]
    # a trained model gets most of one image per class right (measured on the test split: see models/README.md)
    report_correct = sum(x["correct"] for x in json.loads(r.stdout)["results"])
    assert report_correct >= 2


@needs_real
@pytest.mark.realdata
def test_the_shipped_model_warns_on_segmented_smears_and_not_on_its_own_test_images():
    """Its calibration (models/README.md): 8 of the test split's segmented images (never trained
    on) are all flagged out of distribution; of the same 8 original images, at most one."""
    import lava_allnet
    from lava_allnet.api import dataset_inputs

    model = lava_allnet.load()
    assert model.spec.calibration is not None and model.spec.format_version == 3
    split = DEFAULT_MODEL.with_name("neurallnet-aria.split.json")
    flagged = {}
    for folder in ("original", "segmented"):
        data = dataset_inputs(model.spec, REAL_DATA / folder, split, "test", limit=8)
        rows = model.predict(data.images, backend="torch")
        assert all(abs(sum(r["probabilities"].values()) - 1) < 1e-9 for r in rows)
        flagged[folder] = sum(r["out_of_distribution"] for r in rows)
    assert flagged["segmented"] == 8 and flagged["original"] <= 1, flagged
