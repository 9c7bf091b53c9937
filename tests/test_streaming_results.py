"""Inference at any scale (issue 36): results appended as they are computed, resumable runs, bad
input mid-run. Memory and speed are measured by benchmarks/bench_memory.py and bench_sim.py."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

EXE = str(Path(sys.executable).parent / "lava-allnet")


def _cli(*args, env=None, timeout=600):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from lava_allnet.data import synth

    d = tmp_path_factory.mktemp("many")
    synth.generate_dataset(d, 12, size=40, seed=21)
    return d


def _metrics(doc):
    return {k: v for k, v in doc.items() if k not in ("timing", "written", "skipped", "merged")}


def test_evaluate_stopped_by_a_bad_file_resumes_to_the_metrics_of_one_run(se_model_file, folder, tmp_path):
    whole = _cli("evaluate", se_model_file, folder, "--backend", "torch", "--json", "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    # a corrupt file in the middle ends a --strict run after the chunks before it were written
    data = tmp_path / "data"
    subprocess.run(["cp", "-r", str(folder), str(data)], check=True)
    bad = data / "Pre" / "Pre_00000.png"
    good = bad.read_bytes()
    bad.write_bytes(b"not a png")
    stopped = _cli("evaluate", se_model_file, data, "--backend", "torch", "--json", "--out", tmp_path / "part",
                   "--strict", env={"LAVA_ALLNET_CHUNK": "5"})
    assert stopped.returncode == 2 and stopped.stderr.strip().startswith("error: ") and "Pre_00000.png" in stopped.stderr
    kept = list(csv.DictReader(open(tmp_path / "part" / "predictions.csv")))
    assert 0 < len(kept) < 48 and len(kept) % 5 == 0  # whole chunks, all of them before the bad file
    bad.write_bytes(good)
    resumed = _cli("evaluate", se_model_file, data, "--backend", "torch", "--json", "--out", tmp_path / "part",
                   "--resume", env={"LAVA_ALLNET_CHUNK": "5"})
    assert resumed.returncode == 0, resumed.stderr
    a, b = json.loads(whole.stdout), json.loads(resumed.stdout)
    assert _metrics({**b, "data": a["data"]}) == _metrics(a)
    rows = list(csv.DictReader(open(tmp_path / "part" / "predictions.csv")))
    assert len(rows) == 48 and len({r["path"] for r in rows}) == 48  # nothing run twice


def test_ctrl_c_leaves_a_valid_file_and_resume_completes_it(se_model_file, folder, tmp_path):
    out = tmp_path / "res.jsonl"
    env = {**os.environ, "LAVA_ALLNET_CHUNK": "4"}
    # a background job of a non-interactive shell (CI) inherits SIGINT ignored, and Python then keeps
    # ignoring it: give the child the default disposition a terminal would (as test_lava_runtime does)
    proc = subprocess.Popen([EXE, "run", str(se_model_file), str(folder), "--backend", "sim", "--out", str(out),
                             "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    lines = out.read_text().splitlines()
    assert 4 <= len(lines) < 48 and all(json.loads(line)["path"] for line in lines)  # every line whole
    resumed = _cli("run", se_model_file, folder, "--backend", "sim", "--out", out, "--resume", "--json", env={"LAVA_ALLNET_CHUNK": "8"})
    assert resumed.returncode == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    fresh = json.loads(_cli("run", se_model_file, folder, "--backend", "torch", "--json").stdout)
    by_path = {r["path"]: r for r in doc["results"]}
    assert sorted(by_path) == sorted(r["path"] for r in fresh["results"])  # every image, once
    for r in fresh["results"]:  # sim == torch, before and after the interruption
        assert (by_path[r["path"]]["class_counts"], by_path[r["path"]]["layer_counts"]) == (r["class_counts"], r["layer_counts"])
    assert doc["accuracy"] == fresh["accuracy"]


def test_a_file_that_vanishes_or_breaks_mid_run_is_a_listed_skip(se_model_file, folder, tmp_path):
    from lava_allnet.api import Model
    from lava_allnet.errors import DataError

    data = tmp_path / "data"
    subprocess.run(["cp", "-r", str(folder), str(data)], check=True)
    model = Model(se_model_file)
    entries = model.entries([data])
    gone, broken = Path(entries[30].name), Path(entries[40].name)
    gone.unlink()  # listed, then removed before its chunk is loaded
    broken.write_bytes(b"\x89PNG truncated")
    run = model.run([data], strict=False)  # the folder listed now: the broken file is a listed skip
    assert [p for p, _ in run.skipped] == [str(broken)] and len(run.results) == 46
    from hw_targets.inference import stream

    run = stream(model.spec, entries, "torch", chunk=8)
    assert dict(run.skipped)[str(gone)].endswith("no such file") and len(run.results) == 46
    with pytest.raises(DataError, match="no such file"):
        stream(model.spec, entries, "torch", chunk=8, strict=True)


def test_a_full_disk_ends_the_run_in_one_line(se_model_file, folder):
    r = _cli("run", se_model_file, folder, "--backend", "torch", "--out", "/dev/full")
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and lines[-1].startswith("error: ") and "/dev/full" in lines[-1] and "--resume" in lines[-1]


def test_sharded_evaluation_merges_to_the_metrics_of_one_run_bit_for_bit(se_model_file, folder, tmp_path):
    single = _cli("evaluate", se_model_file, folder, "--backend", "torch", "--json")
    assert single.returncode == 0, single.stderr
    for i in range(3):
        r = _cli("evaluate", se_model_file, folder, "--backend", "torch", "--shard", f"{i}/3", "--out", tmp_path / f"s{i}")
        assert r.returncode == 0, r.stderr
    dirs = [tmp_path / f"s{i}" for i in range(3)]
    shard_rows = [len(list(csv.DictReader(open(d / "predictions.csv")))) for d in dirs]
    assert shard_rows == [16, 16, 16]
    merged = _cli("evaluate", se_model_file, folder, "--json", *[a for d in dirs[::-1] for a in ("--merge", d)])
    assert merged.returncode == 0, merged.stderr
    a, b = json.loads(single.stdout), json.loads(merged.stdout)
    assert b.pop("merged") == [str(d) for d in dirs[::-1]]
    assert json.dumps(_metrics(a), sort_keys=True) == json.dumps(_metrics(b), sort_keys=True)
    # a missing or unfinished shard, or one of another evaluation, is refused in one line
    r = _cli("evaluate", se_model_file, folder, "--merge", dirs[0], "--merge", dirs[1])
    assert r.returncode == 2 and "every shard 0..n-1" in r.stderr
    lines = (dirs[2] / "predictions.csv").read_text().splitlines()
    (dirs[2] / "predictions.csv").write_text("\n".join(lines[:-3]) + "\n")
    r = _cli("evaluate", se_model_file, folder, *[a for d in dirs for a in ("--merge", d)])
    assert r.returncode == 2 and "incomplete (3 of 16" in r.stderr and "--resume" in r.stderr
    r = _cli("evaluate", se_model_file, folder, "--backend", "torch", "--shard", "2/3", "--out", dirs[2], "--resume")
    assert r.returncode == 0, r.stderr
    again = _cli("evaluate", se_model_file, folder, "--json", *[a for d in dirs for a in ("--merge", d)])
    assert json.dumps(_metrics(json.loads(again.stdout)), sort_keys=True) == json.dumps(_metrics(a), sort_keys=True)
