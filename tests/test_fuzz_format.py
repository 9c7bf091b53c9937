"""Fuzz the model-file loader: whatever the bytes or structure, only ModelFileError escapes."""
from __future__ import annotations

import io
import os

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lava_allnet.errors import ModelFileError
from netx import format as nf

# Derandomized: CI runs exactly the cases run here (a random new case would make CI flaky).
# FUZZ_EXPLORE=N runs N fresh random cases per test instead (by hand, to hunt new bugs).
_EXPLORE = int(os.environ.get("FUZZ_EXPLORE", "0"))
SETTINGS = settings(max_examples=_EXPLORE or 120, deadline=None, derandomize=not _EXPLORE, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def _read(path) -> None:
    try:
        spec = nf.read(path)
    except ModelFileError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    # if it loads, it must be self-consistent enough to build the torch model
    from netx.export import network_from_spec

    network_from_spec(spec)


@SETTINGS
@given(data=st.data())
def test_byte_mutations_of_a_valid_file(se_model_file, tmp_path_factory, data):
    raw = bytearray(se_model_file.read_bytes())
    n = data.draw(st.integers(1, 12))
    for _ in range(n):
        kind = data.draw(st.sampled_from(["flip", "cut", "zero", "insert"]))
        pos = data.draw(st.integers(0, len(raw) - 1))
        if kind == "flip":
            raw[pos] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "cut":
            del raw[pos:]
            if not raw:
                break
        elif kind == "zero":
            raw[pos:pos + 64] = bytes(min(64, len(raw) - pos))
        else:
            raw[pos:pos] = data.draw(st.binary(min_size=1, max_size=32))
    path = tmp_path_factory.mktemp("fuzz") / "m.net"
    path.write_bytes(bytes(raw))
    _read(path)


FIELDS = ["type", "shape", "weight", "weight1", "bias1", "weight2", "bias2", "stride", "padding", "kernelSize",
          "groups", "inChannels", "outChannels", "hidden", "gateLevels", "squeezeExp", "messageBits",
          "inputMessageBits", "neuron/iDecay", "neuron/vThMant", "neuron/type"]
VALUES = st.one_of(
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-300, 300), min_size=0, max_size=6),
    st.binary(max_size=8),
)


@SETTINGS
@given(data=st.data())
def test_structural_mutations(se_model_file, tmp_path_factory, data):
    path = tmp_path_factory.mktemp("fuzz") / "m.net"
    path.write_bytes(se_model_file.read_bytes())
    with h5py.File(path, "r+") as f:
        layers = sorted(f["layer"].keys(), key=int)
        for _ in range(data.draw(st.integers(1, 4))):
            action = data.draw(st.sampled_from(["delete", "replace", "attr", "drop_layer", "swap"]))
            li = data.draw(st.sampled_from(layers))
            g = f["layer"][li] if li in f["layer"] else None
            if g is None:
                continue
            field = data.draw(st.sampled_from(FIELDS))
            if action == "delete" and field in g:
                del g[field]
            elif action == "replace":
                if field in g:
                    del g[field]
                value = data.draw(VALUES)
                try:
                    g.create_dataset(field, data=np.asarray(value) if not isinstance(value, bytes) else np.void(value))
                except (TypeError, ValueError):
                    pass
            elif action == "attr":
                key = data.draw(st.sampled_from(["format", "format_version", "class_names", "time_steps", "population"]))
                value = data.draw(VALUES)
                try:
                    f.attrs[key] = value
                except (TypeError, ValueError):  # h5py may have deleted it before failing
                    if key in f.attrs:
                        del f.attrs[key]
            elif action == "drop_layer":
                del f["layer"][li]
            elif action == "swap" and len(layers) > 1:
                other = data.draw(st.sampled_from(layers))
                if other != li and other in f["layer"]:
                    f["layer"].move(li, "tmp")
                    f["layer"].move(other, li)
                    f["layer"].move("tmp", other)
    _read(path)


# Value mutations keep a file's structure, so many of them load: those are built in Lava and run
# through the CLI (one image, the simulator), which must end with exit 0 or 2, never a traceback
# and never a hang (the timeout). Seeded: the same cases every run.
NUMERIC = ["weight", "bias", "neuron/iDecay", "neuron/vDecay", "neuron/vThMant", "weight1", "bias1", "weight2",
           "bias2", "bias1Exp", "bias2Exp", "squeezeExp", "exciteExp", "gateLevels", "messageBits",
           "inputMessageBits", "refDelay"]


def _value_mutant(src, path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    path.write_bytes(src.read_bytes())
    with h5py.File(path, "r+") as f:
        for _ in range(int(rng.integers(1, 3))):
            li = str(int(rng.integers(0, len(f["layer"]))))
            fields = [k for k in NUMERIC if k in f["layer"][li]]
            if not fields:
                continue
            ds = f["layer"][li][fields[int(rng.integers(len(fields)))]]
            kind = rng.integers(3)
            bound = {0: 2**7, 1: 2**15, 2: 2**30}[int(kind)]
            value = rng.integers(-bound, bound, size=ds.shape) if ds.shape else rng.integers(-bound, bound)
            ds[...] = np.asarray(value).astype(ds.dtype) if ds.dtype.kind in "iu" else value


def test_value_mutants_that_load_run_on_the_simulator_with_exit_0_or_2(se_model_file, synth_images, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from netx.export import network_from_spec

    exe = str(Path(sys.executable).parent / "lava-allnet")
    image = str(synth_images[1][0])
    loaded, refused = [], 0
    for seed in range(60):
        path = tmp_path / f"m{seed}.net"
        _value_mutant(se_model_file, path, seed)
        try:
            network_from_spec(nf.read(path))
        except ModelFileError as exc:
            assert str(exc) and "\n" not in str(exc)
            refused += 1
            continue
        loaded.append(path)
    assert len(loaded) >= 6 and refused >= 1, (len(loaded), refused)  # both paths exercised
    codes = []
    for path in loaded[:8]:
        r = subprocess.run([exe, "run", str(path), image, "--backend", "sim", "--json"], capture_output=True,
                           text=True, timeout=240)
        assert r.returncode in (0, 2), (path.name, r.returncode, r.stderr[-2000:])
        assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr[-2000:]
        if r.returncode == 2:
            assert len(r.stderr.strip().splitlines()[-1:]) == 1 and "error: " in r.stderr
        codes.append(r.returncode)
    assert 0 in codes, codes  # some mutants really ran on the simulator
