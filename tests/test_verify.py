"""verify compares every value: a moved spike or a changed graded value is caught where counts are not."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from hw_targets.verify import verify
from lava_allnet.verify import ValueComparison
from netx import format as nf

EXE = str(Path(sys.executable).parent / "lava-allnet")


def _counts_per_step(path: str) -> np.ndarray:
    return np.count_nonzero(np.load(path), axis=2)  # (N, T) messages per step: what counts compare


def _tampered(spec, images, change):
    """verify with ``change(recording, first_image)`` applied to the simulator's recording; also
    returns whether the per-step message counts of every stage stayed equal."""
    counts_equal = {}

    def tamper(recorded, start):
        before = {k: _counts_per_step(p) for k, (p, _) in recorded.items()}
        change(recorded)
        counts_equal["all"] = all(np.array_equal(before[k], _counts_per_step(p)) for k, (p, _) in recorded.items())

    return verify(spec, images, chunk=len(images), tamper=tamper), counts_equal["all"]


def test_one_moved_spike_is_caught_with_its_place_though_counts_agree(se_model_file, synth_images):
    spec = nf.read(se_model_file)
    images = synth_images[0][:2]

    def move_spike(recorded):
        m = np.load(recorded["conv2"][0], mmap_mode="r+")
        row = m[1, 3]  # image 1, step 3
        on, off = np.flatnonzero(row)[0], np.flatnonzero(row == 0)[0]
        row[on], row[off] = 0, 1  # the same number of spikes, one neuron moved
        m.flush()
        move_spike.at = (int(on), int(off))

    report, counts_equal = _tampered(spec, images, move_spike)
    assert counts_equal  # a count comparison would pass
    assert not report["identical"]
    first = report["first_difference"]
    assert first["layer"] == "conv2" and first["image"] == 1 and first["step"] == 3
    assert first["neuron"] == min(move_spike.at)
    assert {first["reference"], first["candidate"]} == {0, 1}
    row = {l["layer"]: l for l in report["layers"]}["conv2"]
    assert row["values_differing"] == 2 and not row["equal"]
    assert all(l["equal"] for l in report["layers"] if l["layer"] != "conv2")


def test_one_changed_graded_value_is_caught_though_counts_agree(se_model_file, synth_images):
    spec = nf.read(se_model_file)
    images = synth_images[0][:2]
    scale = next(s for s in spec.stage_names() if s.endswith(".scale"))

    def change_value(recorded):
        m = np.load(recorded[scale][0], mmap_mode="r+")
        flat = m[0].reshape(-1)
        k = int(np.flatnonzero(flat > 1)[0])  # a graded message above 1 stays non-zero when lowered
        change_value.was = int(flat[k])
        flat[k] -= 1
        m.flush()

    report, counts_equal = _tampered(spec, images, change_value)
    assert counts_equal
    assert not report["identical"]
    first = report["first_difference"]
    assert first["layer"] == scale and first["image"] == 0
    assert (first["reference"], first["candidate"]) == (change_value.was, change_value.was - 1)


def test_untampered_runs_are_identical_and_every_value_is_compared(se_model_file, synth_images):
    spec = nf.read(se_model_file)
    images = synth_images[0][:3]
    report = verify(spec, images, chunk=2)  # two chunks: indices continue across them
    assert report["identical"] and report["predictions_equal"] and report["n_images"] == 3
    for layer in report["layers"]:
        assert layer["values_compared"] == layer["neurons"] * spec.time_steps * 3, layer
        assert layer["reference_messages"] == layer["candidate_messages"] > 0, layer


def test_value_comparison_reports_missing_stages_and_needs_images():
    cmp = ValueComparison({"a": (2, 2, 1), "b": (3,)}, steps=2)
    assert not cmp.identical  # nothing compared is not a pass
    cmp.add(0, {"a": np.zeros((2, 4)), "b": np.ones((2, 3))}, {"a": np.zeros((2, 4))})
    rep = cmp.report()
    assert not rep["identical"] and [l["missing"] for l in rep["layers"]] == [False, True]
    cmp = ValueComparison({"a": (2, 2, 1)}, steps=1)
    cmp.add(0, {"a": np.array([[0, 1, 0, 3]])}, {"a": np.array([[0, 1, 0, 2]])})
    first = cmp.report()["first_difference"]
    assert first == {"layer": "a", "image": 0, "step": 0, "neuron": 3, "index": [1, 1, 0], "reference": 3,
                     "candidate": 2}


def test_verify_cli_reports_values_compared_and_exits_1_on_a_difference(se_model_file, synth_images):
    spec = nf.read(se_model_file)
    paths = [str(p) for p in synth_images[1][:2]]
    r = subprocess.run([EXE, "verify", str(se_model_file), *paths, "--json"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["identical"]
    for layer in report["layers"]:
        assert layer["values_compared"] >= layer["neurons"] * spec.time_steps * 2, layer
    # the floating-point simulator rounds nothing: it differs from the integer reference, exit 1
    r = subprocess.run([EXE, "verify", str(se_model_file), *paths, "--sim-float"], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MISMATCH" in r.stdout and "first difference" in r.stdout
