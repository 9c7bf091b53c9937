"""Clinical output: calibrated probabilities, abstention, out-of-distribution warnings, metrics,
predictions CSV (issue 33)."""
from __future__ import annotations

import csv
import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from lava_allnet import calibration as cal
from lava_allnet import evaluation as ev
from lava_allnet.errors import ModelFileError
from netx import format as nf

EXE = str(Path(sys.executable).parent / "lava-allnet")


def _cli(*args, timeout=600):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------ pure parts


def test_fit_temperature_recovers_the_generating_temperature():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 60, size=(4000, 4)).astype(np.float64)
    p = cal.softmax(counts / 9.0)
    labels = np.array([rng.choice(4, p=row) for row in p])
    assert cal.fit_temperature(counts, labels) == pytest.approx(9.0, rel=0.08)


def test_abstain_threshold_is_the_lowest_that_meets_the_target():
    conf = np.array([0.99, 0.95, 0.9, 0.9, 0.8, 0.7, 0.6, 0.5])
    ok = np.array([1, 1, 1, 1, 0, 1, 0, 1], dtype=bool)
    t = cal.abstain_threshold(conf, ok, 0.8)
    accepted = conf >= t
    assert ok[accepted].mean() >= 0.8
    assert t == 0.7  # accepting down to 0.7: 5/6; down to 0.6 would be 5/7 < 0.8
    assert cal.abstain_threshold(conf, ok, 0.5) == 0.0  # every image already meets it
    none = cal.abstain_threshold(conf, np.zeros(8, bool), 0.9)
    assert not (conf >= none).any()
    # tied confidences are accepted or refused together
    assert cal.abstain_threshold(np.array([0.9, 0.9, 0.5]), np.array([1, 0, 1], bool), 0.9) > 0.9


def test_wilson_interval_and_ece_match_known_values():
    lo, hi = ev.wilson_ci(np.array([1] * 8 + [0] * 2))
    assert (round(lo, 4), round(hi, 4)) == (0.4902, 0.9433)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 1, 0, 0])
    # bin (0.8667, 0.9333]: confidence 0.9, accuracy 0.5; bin (0.6, 0.6667]... 0.6 sits in (0.5333, 0.6]
    e = ev.expected_calibration_error(probs, labels)
    assert e["ece"] == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert sum(b["count"] for b in e["bins"]) == 4 and len(e["bins"]) == 15


def test_ood_score_is_the_mahalanobis_distance():
    rng = np.random.default_rng(1)
    train = rng.normal(size=(500, len(cal.FEATURES))) * np.arange(1, len(cal.FEATURES) + 1)
    val = rng.normal(size=(100, len(cal.FEATURES))) * np.arange(1, len(cal.FEATURES) + 1)
    counts = rng.integers(0, 30, size=(100, 4))
    c = cal.fit(counts, rng.integers(0, 4, 100), val, train, 0.5, 0.95)
    d = val[:3] - np.asarray(c.ood_center)
    expect = np.sqrt(np.einsum("ni,ij,nj->n", d, np.asarray(c.ood_precision), d))
    np.testing.assert_allclose(c.ood_score(val[:3]), expect)
    assert np.mean(c.ood_score(val) > c.ood_threshold) == pytest.approx(0.05, abs=0.011)
    # the per-feature scale is learnt: a shift of 3 sd in the widest feature is far, in raw units not
    far = val[:1].copy()
    far[0, 0] += 3 * 40
    assert c.ood_score(far)[0] > c.ood_score(val[:1])[0] + 20


# ------------------------------------------------------------------- file format


def _calibrated_spec(spec):
    k = len(cal.FEATURES)
    c = cal.Calibration(12.5, 0.8, 0.99, [1.0] * k, np.eye(k).tolist(), 7.5, 0.98, {"validation_images": 30})
    return dataclasses.replace(spec, calibration=c)


def test_calibration_round_trips_as_format_version_3(se_model_file, tmp_path):
    spec = nf.read(se_model_file)
    assert spec.format_version == 1 and spec.calibration is None
    nf.write(_calibrated_spec(spec), tmp_path / "c.net")
    back = nf.read(tmp_path / "c.net")
    assert back.format_version == 3
    assert back.calibration == _calibrated_spec(spec).calibration
    assert nf.retimed(back, 8).calibration is None  # fitted on T steps' counts: not valid for another T
    nf.write(spec, tmp_path / "plain.net")
    assert nf.read(tmp_path / "plain.net").format_version == 1  # no calibration: still readable by version 1


@pytest.mark.parametrize("change, message", [
    (lambda f: f.attrs.__setitem__("format_version", 2), "needs format version 3"),
    (lambda f: f.attrs.__setitem__("calibration", np.bytes_(b"{not json")), "not a valid calibration"),
    (lambda f: f.attrs.__setitem__("calibration", np.bytes_(json.dumps({"temperature": 1.0}).encode())), "missing"),
    (lambda f: f.attrs.__setitem__("calibration", np.bytes_(f.attrs["calibration"].replace(b"12.5", b"-1.0"))),
     "temperature"),
])
def test_a_bad_calibration_is_refused_in_one_line(se_model_file, tmp_path, change, message):
    path = tmp_path / "c.net"
    nf.write(_calibrated_spec(nf.read(se_model_file)), path)
    with h5py.File(path, "r+") as f:
        change(f)
    with pytest.raises(ModelFileError, match=message):
        nf.read(path)


# -------------------------------------------------------------- commands, end to end
# (the `calibrated` fixture, in conftest.py: synthetic smears, a split and `lava-allnet calibrate`)


def test_calibrate_stores_what_it_fitted(calibrated, se_model_file):
    rep, spec = calibrated["report"], nf.read(calibrated["model"])
    base = nf.read(se_model_file)
    assert [l.type for l in spec.layers] == [l.type for l in base.layers]
    for a, b in zip(spec.layers, base.layers):  # the network itself is untouched
        if hasattr(a, "weight"):
            np.testing.assert_array_equal(a.weight, b.weight)
    assert spec.format_version == 3 and rep["written"] == [str(calibrated["model"])]
    c = spec.calibration
    assert c.temperature == rep["temperature"] > 0 and c.abstain_below == rep["abstain_below"]
    assert c.fitted["validation_images"] == 24 and c.fitted["training_images"] == 48
    assert c.fitted["validation_flagged"] <= 0.05
    assert c.fitted["validation_accepted_accuracy"] is None or c.fitted["validation_accepted_accuracy"] >= 0.5


def test_run_json_and_csv_carry_probabilities_abstention_and_ood(calibrated, tmp_path):
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    src = sorted(calibrated["data"].rglob("*.png"))[:3]
    for i, p in enumerate(src):
        (folder / f"img{i}.png").write_bytes(p.read_bytes())
    from PIL import Image

    dark = np.asarray(Image.open(src[0])).copy()
    dark[dark.min(axis=2) > 150] = 0  # the background blacked out, as in the dataset's segmented images
    Image.fromarray(dark).save(folder / "segmented-like.png")
    r = _cli("run", calibrated["model"], folder, "--backend", "torch", "--json", "--out", tmp_path / "pred.csv")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["calibrated"] is True
    c = nf.read(calibrated["model"]).calibration
    for res in doc["results"]:
        p = res["probabilities"]
        assert list(p) == doc["class_names"] and sum(p.values()) == pytest.approx(1.0)
        assert res["confidence"] == max(p.values())
        assert res["prediction"] == max(p, key=p.get)
        assert res["abstain"] == (res["confidence"] < c.abstain_below)
        assert res["out_of_distribution"] == (res["ood_score"] > c.ood_threshold)
    by_name = {Path(res["path"]).name: res for res in doc["results"]}
    assert by_name["segmented-like.png"]["out_of_distribution"] is True
    rows = list(csv.DictReader(open(tmp_path / "pred.csv")))
    assert [Path(row["path"]).name for row in rows] == [Path(res["path"]).name for res in doc["results"]]
    for row, res in zip(rows, doc["results"]):
        assert row["prediction"] == res["prediction"] and row["label"] == ""
        assert float(row["confidence"]) == pytest.approx(res["confidence"])
        assert row["abstain"] == str(int(res["abstain"])) and row["out_of_distribution"] == str(int(res["out_of_distribution"]))
        assert [float(row[f"p_{k}"]) for k in doc["class_names"]] == pytest.approx(list(res["probabilities"].values()))


def test_an_uncalibrated_model_says_so(se_model_file, synth_dir):
    r = _cli("run", se_model_file, synth_dir / "Pro", "--backend", "torch", "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["calibrated"] is False
    assert all(res["probabilities"] is None and res["out_of_distribution"] is None for res in doc["results"])
    r = _cli("run", se_model_file, synth_dir / "Pro", "--backend", "torch")
    assert "no calibration" in r.stderr


def test_evaluate_reports_the_clinical_metrics(calibrated, tmp_path):
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, matthews_corrcoef, roc_auc_score

    r = _cli("evaluate", calibrated["model"], calibrated["data"], "--split", calibrated["split"], "--backend", "torch",
             "--json", "--out", tmp_path / "ev")
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    rows = list(csv.DictReader(open(tmp_path / "ev" / "predictions.csv")))
    names = rep["class_names"]
    y = np.array([names.index(row["label"]) for row in rows])
    p = np.array([names.index(row["prediction"]) for row in rows])
    prob = np.array([[float(row[f"p_{c}"]) for c in names] for row in rows])
    assert rep["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, p))
    assert rep["cohen_kappa"] == pytest.approx(cohen_kappa_score(y, p))
    assert rep["mcc"] == pytest.approx(matthews_corrcoef(y, p))
    assert rep["roc_auc_ovr"]["macro"] == pytest.approx(roc_auc_score(y, prob, multi_class="ovr", average="macro"))
    assert set(rep["roc_auc_ovr"]["per_class"]) == set(names)
    assert rep["ece"] == pytest.approx(ev.expected_calibration_error(prob, y)["ece"])
    lo, hi = rep["accuracy_ci95_wilson"]
    assert lo < rep["accuracy"] < hi and len(rep["accuracy_ci95"]) == 2
    sel = rep["selective"]
    assert sel["coverage"] == pytest.approx(np.mean([row["abstain"] == "0" for row in rows]))
    assert len(sel["risk_coverage"]["coverage"]) == len(rows)
    for name in ("reliability.png", "risk_coverage.png", "confusion_matrix.png"):
        assert (tmp_path / "ev" / name).stat().st_size > 1000, name


def test_calibrate_refusals_are_one_line(calibrated, se_model_file, tmp_path):
    r = _cli("calibrate", se_model_file, calibrated["data"], "--split", calibrated["split"], "--out", se_model_file)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error: ") and "overwrite" in r.stderr
    tiny = tmp_path / "split.json"
    doc = json.loads(calibrated["split"].read_text())
    doc["val"] = doc["val"][:5]
    tiny.write_text(json.dumps(doc))
    r = _cli("calibrate", se_model_file, calibrated["data"], "--split", tiny, "--out", tmp_path / "x.net")
    assert r.returncode == 2 and "at least 20 validation" in r.stderr
    assert not (tmp_path / "x.net").exists()
