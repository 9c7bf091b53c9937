"""The extended NetX format: round trip, version, and loud errors for anything unknown or missing."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest
import torch

from conftest import make_model
from lava_allnet.errors import ModelFileError
from netx import export as ex
from netx import format as nf


def _assert_same_integers(spec: nf.NetworkSpec, other: nf.NetworkSpec) -> None:
    """Every weight, gate bias and neuron parameter of the two specs is the same integer."""
    assert len(spec.layers) == len(other.layers)
    for a, b in zip(spec.layers, other.layers):
        for key in ("weight", "weight1", "weight2", "bias1", "bias2"):
            if hasattr(a, key):
                np.testing.assert_array_equal(getattr(a, key), getattr(b, key))
        if hasattr(a, "neuron"):
            assert a.neuron == b.neuron


def test_round_trip_is_exact(se_model_file, synth_images):
    spec = nf.read(se_model_file)
    assert spec.format_version == nf.required_version(spec) == 1  # no version-2 field: readable by version 1
    assert [l.type for l in spec.layers] == ["input", "conv", "conv", "se", "conv", "se", "flatten", "dense"]
    net = ex.network_from_spec(spec)
    # re-export of the rebuilt network gives the same integers
    again = ex.spec_from_network(net)
    _assert_same_integers(spec, again)


def test_file_has_version_attribute(se_model_file):
    with h5py.File(se_model_file) as f:
        assert f.attrs["format"].decode() == nf.FORMAT_NAME
        assert int(f.attrs["format_version"]) == 1


def _copy(src, tmp_path):
    dst = tmp_path / "m.net"
    shutil.copy(src, dst)
    return dst


def test_unknown_layer_type_names_index_and_type(se_model_file, tmp_path):
    p = _copy(se_model_file, tmp_path)
    with h5py.File(p, "r+") as f:
        del f["layer/3/type"]
        f["layer/3"].create_dataset("type", (1,), "S10", [b"pool"])
    with pytest.raises(ModelFileError, match=r"layer 3 \(pool\): unknown layer type 'pool'"):
        nf.read(p)


@pytest.mark.parametrize(
    "layer,field,pattern",
    [
        (3, "weight1", r"layer 3 \(se\): missing field 'weight1'"),
        (3, "gateLevels", r"layer 3 \(se\): missing field 'gateLevels'"),
        (1, "weight", r"layer 1 \(conv\): missing field 'weight'"),
        (1, "neuron/vThMant", r"layer 1 \(conv\): missing field 'neuron/vThMant'"),
        (7, "weight", r"layer 7 \(dense\): missing field 'weight'"),
        (0, "messageBits", r"layer 0 \(input\): missing field 'messageBits'"),
    ],
)
def test_missing_field_is_a_clear_error(se_model_file, tmp_path, layer, field, pattern):
    p = _copy(se_model_file, tmp_path)
    with h5py.File(p, "r+") as f:
        del f[f"layer/{layer}/{field}"]
    with pytest.raises(ModelFileError, match=pattern):
        nf.read(p)


def test_wrong_or_missing_version(se_model_file, tmp_path):
    p = _copy(se_model_file, tmp_path)
    with h5py.File(p, "r+") as f:
        f.attrs["format_version"] = 99
    with pytest.raises(ModelFileError, match="format version 99 is not supported"):
        nf.read(p)
    with h5py.File(p, "r+") as f:
        del f.attrs["format_version"]
    with pytest.raises(ModelFileError, match="missing root attribute 'format_version'"):
        nf.read(p)


def test_inconsistent_shapes(se_model_file, tmp_path):
    p = _copy(se_model_file, tmp_path)
    with h5py.File(p, "r+") as f:
        w = f["layer/2/weight"][()]
        del f["layer/2/weight"]
        f["layer/2"].create_dataset("weight", data=w[:, :-1])
    with pytest.raises(ModelFileError, match=r"layer 2 \(conv\): field 'weight' has shape"):
        nf.read(p)


def test_stock_netx_file_is_refused(tmp_path):
    """A plain lava-dl export (no format attribute) is named for what it is."""
    p = tmp_path / "stock.net"
    with h5py.File(p, "w") as f:
        f.create_group("layer/0").create_dataset("type", (1,), "S10", [b"input"])
    with pytest.raises(ModelFileError, match="not a lava-allnet model"):
        nf.read(p)


def test_truncated_and_non_hdf5_files(se_model_file, tmp_path):
    data = se_model_file.read_bytes()
    p = tmp_path / "cut.net"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="cut.net"):
        nf.read(p)
    q = tmp_path / "text.net"
    q.write_text("hello")
    with pytest.raises(ModelFileError, match="not a readable HDF5 model file"):
        nf.read(q)
    with pytest.raises(ModelFileError, match="no such model file"):
        nf.read(tmp_path / "absent.net")


def test_odd_weight_mantissa_is_refused(se_model_file, tmp_path):
    p = _copy(se_model_file, tmp_path)
    with h5py.File(p, "r+") as f:
        w = f["layer/1/weight"][()]
        w.flat[0] = 3
        del f["layer/1/weight"]
        f["layer/1"].create_dataset("weight", data=w)
    with pytest.raises(ModelFileError, match="odd mantissas"):
        nf.read(p)


def test_retimed_file_runs_the_same_first_steps_then_more(se_model_file, synth_images, tmp_path):
    spec = nf.read(se_model_file)
    longer = tmp_path / "longer.net"
    nf.write(nf.retimed(spec, spec.time_steps + 5), longer)
    again = nf.read(longer)
    assert again.time_steps == spec.time_steps + 5 and again.model_config["time_steps"] == spec.time_steps + 5
    _assert_same_integers(spec, again)
    short, long_ = ex.network_from_spec(spec), ex.network_from_spec(again)
    x = torch.from_numpy(synth_images[0][:6])
    with torch.no_grad():
        s, l = short(short.encode(x), record=True), long_(long_.encode(x), record=True)
    # the dynamics are causal: the first T steps are the original run's, every stage, step by step
    t = spec.time_steps
    assert len(s.stage_steps) > 8
    for name, steps in s.stage_steps.items():
        assert torch.equal(l.stage_steps[name][:, :t], steps), name
    last = list(s.stage_steps)[-1]
    assert l.stage_steps[last][:, t:].sum() > 0  # and the extra steps carry output spikes
    with pytest.raises(ModelFileError, match="1..100000"):
        nf.retimed(spec, 0)
