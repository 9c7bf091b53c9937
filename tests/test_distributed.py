"""Data-parallel training (training/distributed.py): DDP with gloo, as ``train --nproc`` and torchrun run it.

Tolerance. One process with batch 16 and two with 8 each compute the same global batch, batch-norm
means and mean gradient; only the order of float sums differs (the ranks' halves are added, then
averaged). After the 3 optimiser steps below the weights and batch-norm means agree to 1e-4
(measured: 8.2e-6 at most, on a parameter whose gradient sits near Adam's epsilon); without the
synchronised means they differ by 65 and validation accuracy changes.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from training import distributed

EXE = str(Path(sys.executable).parent / "lava-allnet")
TOL = 1e-4

# 11 images per class: 33 training images, so the last global batch holds 1 image and rank 1 runs a
# stand-in with weight 0 (the short-batch rule); 3 optimiser steps per epoch
RECIPE = """
name = "ddp-test"
[data]
root = "synthetic"
synthetic_per_class = 11
val_fraction = 0.25
[model]
name = "neurallnet-demo"
input_size = 48
[schedule]
epochs = {epochs}
batch_size = 16
lr = 1e-2
seed = 0
{extra}"""

# distillation: the ANN teacher is trained by rank 0 alone, the other ranks load it
DISTILL = """
[losses.distill]
weight = 0.5
[teacher]
epochs = 1
"""


def _recipe(tmp_path: Path, epochs: int = 1, distill: bool = False) -> Path:
    p = tmp_path / f"ddp-{epochs}{'-distill' if distill else ''}.toml"
    p.write_text(RECIPE.format(epochs=epochs, extra=DISTILL if distill else ""))
    return p


def _env(**extra) -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", **extra)
    env.pop("WORLD_SIZE", None)
    return env


def _train(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "train", *args], capture_output=True, text=True, timeout=timeout, env=env or _env())


def _state(run: Path) -> dict:
    return torch.load(run / "1-train" / "checkpoint.pt", map_location="cpu", weights_only=False)


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp-single")
    r = _train("--recipe", str(_recipe(tmp)), "--out", str(tmp / "run"))
    assert r.returncode == 0, r.stderr
    return tmp / "run"


@pytest.fixture(scope="module")
def one_process_distilled(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp-single-distill")
    r = _train("--recipe", str(_recipe(tmp, distill=True)), "--out", str(tmp / "run"))
    assert r.returncode == 0, r.stderr
    return tmp / "run"


def _assert_same_training(run: Path, reference: Path) -> None:
    a, b = _state(reference), _state(run)
    assert _max_diff(a["model"], b["model"]) <= TOL
    (ha,), (hb,) = a["state"]["history"], b["state"]["history"]
    assert hb["val_accuracy"] == ha["val_accuracy"]
    assert hb["train_accuracy"] == ha["train_accuracy"]
    assert hb["train_loss"] == pytest.approx(ha["train_loss"], rel=1e-5)
    # the epoch's sums cover every image once, over both ranks
    assert json.loads((run / "1-train" / "metrics.json").read_text())["split_sizes"] == {"train": 33, "val": 11}
    assert (run / "model.net").is_file()


def test_two_gloo_ranks_of_batch_8_train_as_one_process_of_batch_16(one_process, tmp_path):
    r = _train("--recipe", str(_recipe(tmp_path)), "--out", str(tmp_path / "run"), "--nproc", "2")
    assert r.returncode == 0, r.stderr
    assert "data-parallel: 2 ranks (gloo), global batch 16" in r.stderr
    assert r.stderr.count("initial spike rates") == 1  # rank 0 alone reports
    _assert_same_training(tmp_path / "run", one_process)


def test_two_ranks_distil_from_the_teacher_rank_0_trained(one_process_distilled, tmp_path):
    r = _train("--recipe", str(_recipe(tmp_path, distill=True)), "--out", str(tmp_path / "run"), "--nproc", "2")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("training the ANN distillation teacher") == 1
    a = torch.load(one_process_distilled / "teacher.pt", map_location="cpu", weights_only=False)["model"]
    b = torch.load(tmp_path / "run" / "teacher.pt", map_location="cpu", weights_only=False)["model"]
    assert _max_diff(a, b) == 0.0
    _assert_same_training(tmp_path / "run", one_process_distilled)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_localhost_with_c10d_rendezvous(one_process, tmp_path):
    port, run = _free_port(), tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", uuid.uuid4().hex,
           "-m", "lava_allnet", "train", "--recipe", str(_recipe(tmp_path)), "--out", str(run)]
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(2)]
    try:
        outs = [n.communicate(timeout=300) for n in nodes]
    finally:
        for n in nodes:
            n.kill()
    assert [n.returncode for n in nodes] == [0, 0], [o[1][-2000:] for o in outs]
    assert sum("data-parallel: 2 ranks (gloo)" in err for _, err in outs) == 1
    _assert_same_training(run, one_process)


def _ranks(tag: str) -> dict[int, int]:
    """rank → pid of the live processes started with ALLNET_TEST_TAG=tag (Linux /proc)."""
    found = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            env = (d / "environ").read_bytes().split(b"\0")
            state = (d / "stat").read_text().split(")")[-1].split()[0]
        except OSError:
            continue
        if f"ALLNET_TEST_TAG={tag}".encode() in env and state != "Z":
            rank = [e for e in env if e.startswith(b"RANK=")]
            if rank:
                found[int(rank[0][5:])] = int(d.name)
    return found


def _without_times(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in history]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_a_killed_rank_stops_the_run_names_itself_and_the_run_resumes_exactly(tmp_path):
    tag, run, recipe = uuid.uuid4().hex, tmp_path / "run", _recipe(tmp_path, epochs=20)
    env = _env(LAVA_ALLNET_CHECKPOINT_EVERY_S="0", ALLNET_TEST_TAG=tag)  # a checkpoint after every batch
    proc = subprocess.Popen([EXE, "train", "--recipe", str(recipe), "--out", str(run), "--nproc", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:  # mid-run: two epochs done
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
            try:
                if _state(run)["state"]["epoch"] >= 2:
                    break
            except (OSError, RuntimeError, EOFError):
                pass
            time.sleep(0.05)
        ranks = _ranks(tag)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=120)
        stopped_in = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err[-3000:]
    assert err.strip().splitlines()[-1] == ("error: training rank 1 failed: killed by SIGKILL; rank 0 stopped. "
                                            "The last checkpoint is intact: continue with --resume")
    assert stopped_in < 60
    assert _ranks(tag) == {}  # nothing left hanging
    saved = _state(run)["state"]
    assert saved["epoch"] >= 2 and len(saved["history"]) == saved["epoch"]
    shutil.copytree(run, tmp_path / "copy")

    # continued with the same world size: the run that was never killed, weight for weight
    r = _train("--resume", str(run), "--nproc", "2")
    assert r.returncode == 0, r.stderr
    r = _train("--recipe", str(recipe), "--out", str(tmp_path / "whole"), "--nproc", "2")
    assert r.returncode == 0, r.stderr
    resumed, whole = _state(run), _state(tmp_path / "whole")
    assert _max_diff(resumed["model"], whole["model"]) == 0.0
    assert _without_times(resumed["state"]["history"]) == _without_times(whole["state"]["history"])

    # or by one process: the epochs done are kept, the rest are trained
    r = _train("--resume", str(tmp_path / "copy"))
    assert r.returncode == 0, r.stderr
    done = _state(tmp_path / "copy")["state"]
    assert done["epoch"] == 20 and done["history"][: saved["epoch"]] == saved["history"]
    assert (tmp_path / "copy" / "model.net").is_file()


def _failure(tmp_path: Path, rank: int, exitcode: int, message: str | None = None) -> ProcessFailure:
    tmp_path.mkdir(exist_ok=True)
    path = tmp_path / f"error-{rank}.json"
    if message is not None:
        path.write_text(json.dumps({"message": message, "timestamp": 1}))
    return ProcessFailure(local_rank=rank, pid=1000 + rank, exitcode=exitcode, error_file=str(path))


def test_the_failure_line_names_the_rank_that_failed_first(tmp_path):
    lost = "RuntimeError: [gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer"
    cases = [
        # a rank's own error, not its peer's lost connection nor the launcher's SIGTERM
        ({0: (1, lost), 1: (2, "DataError: x.png: cannot read image")},
         "training rank 1 failed: DataError: x.png: cannot read image; rank 0 stopped."),
        ({0: (-signal.SIGTERM, None), 1: (-signal.SIGKILL, None)},
         "training rank 1 failed: killed by SIGKILL; rank 0 stopped."),
        ({0: (-signal.SIGTERM, None), 2: (1, None), 1: (-signal.SIGTERM, None)},
         "training rank 2 failed: exit code 1; ranks 0, 1 stopped."),
    ]
    for k, (spec, line) in enumerate(cases):
        failures = {r: _failure(tmp_path / str(k), r, code, msg) for r, (code, msg) in spec.items()}
        got = distributed.failure_line(ChildFailedError("lava-allnet", failures))
        assert got == line + " The last checkpoint is intact: continue with --resume"


def test_a_ranks_error_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(path))
    real_fsync = os.fsync

    def fail(fd):  # e.g. the launcher's SIGTERM or a full disk before the write is done
        raise OSError("interrupted")

    monkeypatch.setattr(os, "fsync", fail)
    distributed.record_failure(RuntimeError("boom"))
    assert list(tmp_path.iterdir()) == []  # torch's launcher raises on a half-written file
    monkeypatch.setattr(os, "fsync", real_fsync)
    distributed.record_failure(RuntimeError("Connection reset by peer"))
    failure = ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(path))
    assert failure.message == "RuntimeError: Connection reset by peer" and failure.timestamp > 0
    assert list(tmp_path.iterdir()) == [path]
    distributed.record_failure(RuntimeError("later"))  # the first error stays
    assert ProcessFailure(local_rank=0, pid=1, exitcode=1, error_file=str(path)).message.endswith("peer")


def test_nproc_refuses_a_bad_recipe_before_starting_ranks_and_inside_torchrun(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[schedule]\nepochs = 0\n')
    r = _train("--recipe", str(bad), "--nproc", "2", "--out", str(tmp_path / "run"))
    assert r.returncode == 2 and r.stderr.count("error:") == 1 and "epochs" in r.stderr
    assert not (tmp_path / "run").exists()
    r = _train("--recipe", str(_recipe(tmp_path)), "--nproc", "2",
               env=dict(_env(), WORLD_SIZE="2", RANK="0", LOCAL_RANK="0"))
    assert r.returncode == 2 and "under torchrun, leave it out" in r.stderr
