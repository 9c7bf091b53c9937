"""The Lava runtime never outlives a run: no child processes, no shared memory — also after failures."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lava_allnet.errors import SimulationError
from netx import build as nb
from netx import format as nf


def _children() -> list[int]:
    """Child processes, except Python's own per-interpreter shared-memory resource tracker."""
    out = subprocess.run(["pgrep", "-P", str(os.getpid())], capture_output=True, text=True).stdout.split()
    kids = []
    for p in out:
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        if b"resource_tracker" not in cmd:
            kids.append(int(p))
    return kids


def _cpu_ticks(pids: list[str]) -> int:
    """User + system clock ticks used so far by these processes (0 for those gone)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total


def _shm() -> set[str]:
    return set(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else set()


def _until_clean(before_children: set, before_shm: set, deadline_s: float = 30.0) -> None:
    """Poll until no child process or shared-memory segment is left over (they may take a moment
    to exit after the runtime stops); fail with what is left at the deadline."""
    deadline = time.monotonic() + deadline_s
    while True:
        kids, shm = set(_children()) - before_children, _shm() - before_shm
        if not kids and not shm:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"left over after {deadline_s:.0f} s: children {sorted(kids)}, /dev/shm {sorted(shm)}")
        time.sleep(0.05)


def test_clean_run_leaves_nothing(se_model_file, synth_images):
    from hw_targets import sim

    before_shm, before_children = _shm(), set(_children())
    r = sim.run(nf.read(se_model_file), synth_images[0][:2])
    assert r.output_neurons.shape[0] == 2
    _until_clean(before_children, before_shm)


def test_failing_process_model_is_cleaned_up(se_model_file, tmp_path):
    """A process model that fails to build (here: its input file is missing) must not hang or leak."""
    from hw_targets import lava_runtime, sim

    spec = nf.read(se_model_file)
    graph = nb.build(spec, str(tmp_path / "missing.npy"), 2)
    cfg = sim.run_config(extra=graph.model_map())
    before_shm, before_children = _shm(), set(_children())
    with pytest.raises(Exception, match="missing.npy"):  # not a hang: pytest-timeout would end it
        with sim._as_simulation_error(), lava_runtime.running(graph.source, cfg):
            pass
    _until_clean(before_children, before_shm)


def test_failure_is_reported_as_simulation_error(se_model_file, tmp_path):
    from hw_targets import lava_runtime, sim

    graph = nb.build(nf.read(se_model_file), str(tmp_path / "missing.npy"), 1)
    with pytest.raises(SimulationError, match="Lava simulator failed"):
        with sim._as_simulation_error(), lava_runtime.running(graph.source, sim.run_config(extra=graph.model_map())):
            pass


def test_ctrl_c_during_a_run_exits_cleanly(se_model_file, synth_dir, tmp_path):
    """SIGINT to `lava-allnet run`: exit 130, one line, no leftover processes or segments."""
    exe = Path(sys.executable).parent / "lava-allnet"
    before_shm = _shm()
    # the folder 40 times (960 images): the run must still be going when the signal comes
    proc = subprocess.Popen(
        [str(exe), "run", str(se_model_file), *[str(synth_dir)] * 40, "--backend", "sim"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        # a background job of a non-interactive shell (CI) inherits SIGINT ignored, and Python
        # then keeps ignoring it: give the child the default disposition a terminal would
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    # wait until the simulator's actors exist, then interrupt the parent only
    deadline = time.time() + 120
    while time.time() < deadline:
        kids = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if len(kids) > 5:
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the simulator never started")
    # wait until the simulator has streamed images (a progress bar line on stderr is not readable
    # without blocking, so poll the actors' CPU time instead of sleeping a fixed while)
    deadline = time.time() + 60
    while time.time() < deadline and _cpu_ticks(kids) < 50:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    deadline = time.time() + 15  # Python's resource tracker exits once it sees EOF
    while True:
        group = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
        if not group or time.time() > deadline:
            break
        time.sleep(0.2)
    left = {p: Path(f"/proc/{p}/cmdline").read_bytes()[:120] for p in group if Path(f"/proc/{p}").exists()}
    assert not left, f"processes left in the run's group: {left}"
    assert _shm() - before_shm == set()
