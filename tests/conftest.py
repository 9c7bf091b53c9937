"""Shared fixtures: small synthetic data and a small calibrated SE model exported to .net."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import lava_allnet  # noqa: F401  (the Python 3.11 patch, before this file imports lava)
# Lava fixes the multiprocessing start method ('fork') when its runtime is first imported and fails
# if something else fixed it first (a test that ran a process pool): import it before any test runs,
# so the outcome does not depend on which tests run and in what order.
import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401,E402


warnings.filterwarnings("ignore", category=UserWarning, module=r"lava(\.|$)")

REPO = Path(__file__).resolve().parent.parent
REAL_DATA = REPO.parent / "shared" / "data" / "all-aria"

SMALL = dict(
    name="test-se",
    input_size=32,
    time_steps=6,
    channels=(8, 16, 16),
    strides=(2, 2, 2),
    se=(False, True, True),
    se_reduction=4,
    population=2,
)


# Under CI (CI=true, set by .ci/run) nothing that matters may skip: a missing compiler, an
# extension that does not build or a missing ../shared ends the session with one line, and any
# skip not listed here fails its test.
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
EXPECTED_SKIPS: dict[str, str] = {
    # reason substring → why CI may skip it
}


def pytest_configure(config):
    torch.set_num_threads(2)


def pytest_sessionstart(session):
    if not CI:
        return
    problems = []
    if not (REAL_DATA / "original").is_dir():
        problems.append(f"{REAL_DATA / 'original'} is missing (the real-image tests read ../shared)")
    if shutil.which(os.environ.get("CXX", "c++")) is None and shutil.which("g++") is None:
        problems.append("no C++ compiler (c++ or g++) for the CUBA extension")
    else:
        from lava_allnet.kernels import fast_cuba

        if not fast_cuba.available():
            problems.append(f"the C++ CUBA extension failed to build ({fast_cuba.build_error()})")
    if problems:
        pytest.exit("CI: " + "; ".join(problems), returncode=1)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if CI and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        if not any(k in reason for k in EXPECTED_SKIPS):
            rep.outcome = "failed"
            rep.longrepr = f"skipped under CI, where it must run: {reason}"


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    from lava_allnet.data import synth

    d = tmp_path_factory.mktemp("synth")
    synth.generate_dataset(d, 6, size=64, seed=3)
    return d


@pytest.fixture(scope="session")
def synth_images(synth_dir) -> tuple[np.ndarray, list[Path]]:
    from lava_allnet.data import images as di

    paths = di.collect_image_paths([synth_dir])
    return di.load_images(paths, 32).images, paths


def make_model(se: bool | str = True, seed: int = 0, calib: np.ndarray | None = None):
    """se: True (SMALL's gates), False (none) or "all" (a gate after every conv layer)."""
    from lava_allnet.config import ModelConfig
    from lava_allnet.model import build_model

    cfg = ModelConfig(**SMALL)
    if se == "all":
        cfg = cfg.with_se(range(1, len(cfg.channels) + 1))
    elif not se:
        cfg = cfg.without_se()
    torch.manual_seed(seed)
    net = build_model(cfg)
    if calib is not None:
        # ~10% spike rates everywhere, so every stage (and the output) is active
        net.calibrate(net.encode(torch.from_numpy(calib)))
    net.eval()
    return net


@pytest.fixture(scope="session")
def se_model_file(tmp_path_factory, synth_images) -> Path:
    from netx.export import export

    path = tmp_path_factory.mktemp("model") / "se.net"
    export(make_model(True, calib=synth_images[0][:16]), path)
    return path


@pytest.fixture(scope="session")
def nose_model_file(tmp_path_factory, synth_images) -> Path:
    from netx.export import export

    path = tmp_path_factory.mktemp("model") / "nose.net"
    export(make_model(False, calib=synth_images[0][:16]), path)
    return path


@pytest.fixture(scope="session")
def se_all_model_file(tmp_path_factory, synth_images) -> Path:
    from netx.export import export

    path = tmp_path_factory.mktemp("model") / "se-all.net"
    export(make_model("all", calib=synth_images[0][:16]), path)
    return path


@pytest.fixture(scope="session")
def calibrated(se_model_file, tmp_path_factory) -> dict:
    """A synthetic ImageFolder with a split (24 validation, 48 training, 24 test images) and the
    small SE model calibrated on it by `lava-allnet calibrate` (its --json report under "report")."""
    import json
    import subprocess
    import sys

    from lava_allnet.data import images as di
    from lava_allnet.data import synth

    root = tmp_path_factory.mktemp("cal")
    data = root / "data"
    synth.generate_dataset(data, 24, size=48, seed=11)
    ds = di.scan_image_folder(data)
    idx = np.arange(len(ds.paths))
    di.save_split(root / "split.json", ds, {"test": idx[0::4], "val": idx[1::4], "train": np.r_[idx[2::4], idx[3::4]]}, 0)
    out = root / "calibrated.net"
    r = subprocess.run([str(Path(sys.executable).parent / "lava-allnet"), "calibrate", str(se_model_file), str(data),
                        "--split", str(root / "split.json"), "--out", str(out), "--target-accuracy", "0.5", "--json"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return {"root": root, "data": data, "split": root / "split.json", "model": out, "report": json.loads(r.stdout)}


def real_images(n_per_class: int = 1) -> list[Path]:
    """A few real smear images read in place from ../shared (never copied)."""
    folder = REAL_DATA / "original"
    if not folder.is_dir():
        return []
    out = []
    for cls in sorted(d for d in folder.iterdir() if d.is_dir()):
        out += sorted(cls.glob("*.jp*g"))[:n_per_class]
    return out
