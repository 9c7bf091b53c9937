"""A non-editable install carries the shipped model and recipes as package data and runs anywhere."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


def _source_copy(dest: Path) -> Path:
    """The working tree's files (tracked and new, not ignored), symlinks kept as symlinks.

    A copy, so the build's build/ and egg-info never touch the repository (a stale build/lib there
    would also leak removed modules into the wheel).
    """
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git working tree")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = REPO / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted in the working tree
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), target)
        elif src.is_file():
            shutil.copy2(src, target)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pkg")
    src = _source_copy(tmp / "src")
    target = tmp / "target"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(src)], capture_output=True, text=True, timeout=300, cwd=tmp)
    assert r.returncode == 0, r.stderr[-3000:]
    return target


def test_the_wheel_holds_the_model_and_recipes_as_files(installed):
    shipped = installed / "lava_allnet" / "shipped"
    from lava_allnet.shipped import MODELS

    for name in MODELS:  # every shipped model (the registry), as a file
        model = shipped / f"{name}.net"
        assert model.is_file() and not model.is_symlink(), name
        assert model.read_bytes() == (REPO / "models" / f"{name}.net").read_bytes(), name
    assert (shipped / "neurallnet-aria.split.json").is_file()
    recipes = sorted(p.name for p in (REPO / "recipes").glob("*.toml"))
    assert recipes, "recipes/*.toml are part of the repository"
    for name in recipes:
        f = shipped / "recipes" / name
        assert f.is_file() and not f.is_symlink(), name
    # the layering survives packaging: core lava_allnet modules do not reach into training
    assert (installed / "training").is_dir() and (installed / "hw_targets" / "inference.py").is_file()


@pytest.mark.slow  # three fresh interpreters importing torch: ~25 s
def test_run_outside_the_repository_uses_the_packaged_model(installed, tmp_path):
    from lava_allnet.data import synth

    synth.generate_dataset(tmp_path / "img", 1, size=128, seed=0, classes=("Pro",))
    image = tmp_path / "img" / "Pro" / "Pro_00000.png"
    env = {**os.environ, "PYTHONPATH": str(installed)}
    r = subprocess.run([sys.executable, "-m", "lava_allnet.cli", "run", str(image), "--backend", "torch", "--json"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    model = Path(doc["model"]).resolve()
    assert model.is_relative_to(installed.resolve()), model
    assert model.name == "neurallnet-aria.net" and doc["n_images"] == 1
    assert doc["results"][0]["label"] == "Pro"
    # the API and the recipes resolve inside the installed package as well
    code = ("import lava_allnet, lava_allnet.cli; from lava_allnet import shipped; "
            "print(lava_allnet.cli.__file__); print(lava_allnet.load().path); print(shipped.recipe_path('demo')); "
            "print(lava_allnet.load('neurallnet-aria-v2').path)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        assert Path(line).resolve().is_relative_to(installed.resolve()), line
    r = subprocess.run([sys.executable, "-m", "lava_allnet", "--version"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env=env)
    assert r.returncode == 0 and r.stdout.strip().startswith("lava-allnet "), (r.stdout, r.stderr)
