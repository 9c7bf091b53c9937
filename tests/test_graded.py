"""The graded family (NeurALLNet-G): integer semantics, file format, Lava exactness, training."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from lava_allnet.errors import ModelFileError
from lava_allnet.graded import GradedLayer, GradedNetwork
from netx import format as nf
from netx.export import graded_from_spec, spec_from_graded

EXE = str(Path(sys.executable).parent / "lava-allnet")
CLASSES = ("a", "b", "c", "d")


def random_graded(seed: int = 0, side: int = 32) -> GradedNetwork:
    """Two strided convs and a read-out with random even 8-bit weights; conv1's first channel has a
    bias that alone passes its threshold (it sends on every image, a blank one included)."""
    rng = np.random.default_rng(seed)

    def w(*shape):
        return 2 * rng.integers(-127, 128, shape)

    c1 = GradedLayer("conv1", "conv", w(6, 3, 3, 3), rng.integers(-3000, 3000, 6), 8, 3, 2, 1)
    c1.bias[0] = 40 << 8
    c2 = GradedLayer("conv2", "conv", w(8, 6, 3, 3), rng.integers(-500, 500, 8), 10, 2, 2, 1)
    n_in = 8 * (side // 4) ** 2
    fc = GradedLayer("fc", "dense", w(4, n_in), rng.integers(-100, 100, 4), 0, 0)
    return GradedNetwork([c1, c2, fc], (3, side, side), CLASSES)


def numpy_reference(net: GradedNetwork, images: np.ndarray) -> list[np.ndarray]:
    """Every layer's messages, by the module doc's arithmetic, in int64 numpy (no torch)."""
    outs, m = [], images.astype(np.int64)
    for l in net.layers:
        w, b = np.asarray(l.weight, np.int64), np.asarray(l.bias, np.int64)
        if l.kind == "conv":
            p, s, k = l.padding, l.stride, w.shape[-1]
            x = np.pad(m, ((0, 0), (0, 0), (p, p), (p, p)))
            oh = (x.shape[2] - k) // s + 1
            acc = np.zeros((m.shape[0], w.shape[0], oh, oh), np.int64)
            for i in range(k):
                for j in range(k):
                    patch = x[:, :, i:i + s * oh:s, j:j + s * oh:s]
                    acc += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
            acc += b[None, :, None, None]
        else:
            acc = m.reshape(len(m), -1) @ w.T + b
        q = acc >> l.shift  # arithmetic: floor, also below zero
        m = q if l.vth == 0 else np.where(q >= l.vth, q, 0)
        outs.append(m)
    return outs


@pytest.fixture(scope="module")
def images(synth_images) -> np.ndarray:
    return synth_images[0][:6]


@pytest.fixture(scope="module")
def graded_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("graded") / "g.net"
    nf.write(spec_from_graded(random_graded()), path)
    return path


def test_the_torch_network_is_the_integer_arithmetic_value_for_value(images):
    net = random_graded()
    ref = numpy_reference(net, images)
    with torch.no_grad():
        out = net(net.encode(torch.from_numpy(images)), record=True, keep=("conv1", "conv2", "fc"))
    for l, r in zip(net.layers, ref):
        got = out.activations[l.name][:, 0].numpy()
        assert np.array_equal(got, r), l.name
        if l.vth:
            assert (r > 0).any() and (r == 0).any() and r.min() == 0  # some sent, some held back, none negative
    assert (ref[-1] < 0).any()  # the read-out is signed
    assert np.array_equal(out.class_counts.numpy(), ref[-1]) and out.overflow == 0
    assert np.array_equal(out.stage_steps["conv1"][:, 0].numpy(), (ref[0] != 0).reshape(len(images), -1).sum(1))


def test_the_file_round_trips_and_refuses_what_a_graded_network_cannot_be(graded_file, tmp_path):
    spec = nf.read(graded_file)
    assert spec.graded and spec.format_version == 4 and spec.time_steps == 1
    back = graded_from_spec(spec)
    for a, b in zip(random_graded().layers, back.layers):
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
        assert (a.shift, a.vth, a.stride, a.padding) == (b.shift, b.vth, b.stride, b.padding)

    def broken(edit) -> str:
        p = tmp_path / f"b{len(list(tmp_path.iterdir()))}.net"
        p.write_bytes(graded_file.read_bytes())
        with h5py.File(p, "r+") as f:
            edit(f)
        with pytest.raises(ModelFileError) as exc:
            nf.read(p)
        return str(exc.value)

    assert "needs format version 4" in broken(lambda f: f.attrs.__setitem__("format_version", 3))
    assert "time_steps 1" in broken(lambda f: f.attrs.__setitem__("time_steps", 4))

    def cuba(f):
        ng = f["layer/2/neuron"]
        for k in list(ng):
            del ng[k]
        ng.create_dataset("type", (1,), "S10", [b"CUBA"])
        for k, v in (("iDecay", 1024), ("vDecay", 128), ("vThMant", 80)):
            ng.create_dataset(k, data=np.int64(v))
    assert "layer 2 (conv): a CUBA neuron in a graded network" in broken(cuba)

    def bad_vth(f):
        del f["layer/1/neuron/vth"]
        f["layer/1/neuron"].create_dataset("vth", data=np.int64(0))
    assert "layer 1 (conv): field 'vth'=0" in broken(bad_vth)

    def big_bias(f):
        b = f["layer/1/bias"][()].astype(np.int64)
        b[0] = 1 << 23
        del f["layer/1/bias"]
        f["layer/1"].create_dataset("bias", data=b)
    assert "field 'bias' has values outside" in broken(big_bias)
    with pytest.raises(ModelFileError, match="one step per image"):
        nf.retimed(spec, 4)


def test_lava_runs_it_value_for_value_and_profile_counts_one_pass(graded_file, images, tmp_path):
    from hw_targets.verify import verify

    spec = nf.read(graded_file)
    report = verify(spec, images, chunk=3)
    assert report["identical"], report["first_difference"]
    rows = {r["layer"]: r for r in report["layers"]}
    assert rows["conv1"]["reference_messages"] > 0 and rows["fc"]["equal"]

    img = tmp_path / "one.png"
    from PIL import Image

    Image.fromarray(images[0].transpose(1, 2, 0)).save(img)
    r = subprocess.run([EXE, "profile", str(graded_file), str(img), "--backend", "sim", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    layers = {l["layer"]: l for l in json.loads(r.stdout)["means"]["layers"]}
    # the input costs one pass: each non-zero pixel once, times its fan-out into conv1
    from netx.analysis import stage_fanouts

    fan = stage_fanouts(spec)["input"]
    x = np.asarray(images[0], np.int64)
    assert layers["input"]["synaptic_ops"] == int(fan[x != 0].sum())
    assert layers["conv1"]["neuron_updates"] == 6 * 16 * 16  # each neuron once per image


def test_grad_cam_runs_through_the_integer_network(graded_file, images):
    from lava_allnet.evaluation import grad_cam

    net = graded_from_spec(nf.read(graded_file))
    cam = grad_cam(net, images[0], layer="conv1")
    assert cam["cam"].shape == images[0].shape[1:] and 0.5 < cam["cam"].max() <= 1.0 and cam["cam"].std() > 0
    assert cam["gradient_norm"] > 0


GRADED_RECIPE = """
name = "g"
[data]
root = "{root}"
val_fraction = 0.25
[model]
name = "neurallnet-demo"
input_size = 32
family = "graded"
[augment]
noise = 4.0
[schedule]
epochs = 2
batch_size = 8
lr = 1e-3
threads = 1
init = "teacher"
[teacher]
epochs = 1
"""


def test_a_graded_recipe_trains_exports_and_resumes_exactly(synth_dir, tmp_path):
    from training import recipe

    path = tmp_path / "g.toml"
    path.write_text(GRADED_RECIPE.format(root=synth_dir))
    whole = recipe.run(recipe.load(path), tmp_path / "whole", show_progress=False)
    spec = nf.read(whole["model"])
    assert spec.graded and spec.frontend.name == "none"
    stopped = recipe.run(recipe.load(path), tmp_path / "cut", show_progress=False, stop_after_batches=4)
    assert stopped.get("stopped")
    done = recipe.run(recipe.read_run_recipe(tmp_path / "cut"), tmp_path / "cut", resume=True, show_progress=False)
    assert Path(done["model"]).read_bytes() == Path(whole["model"]).read_bytes()
    rows = json.loads((tmp_path / "whole" / "1-train" / "metrics.json").read_text())
    assert rows["family"] == "graded" and len(rows["history"]) == 2


def test_a_graded_stage_keeps_only_the_running_mean_and_resumes_it_exactly(synth_dir, tmp_path):
    import torch

    from training import recipe
    from training.checkpoint import load_torch

    path = tmp_path / "g.toml"
    path.write_text(GRADED_RECIPE.format(root=synth_dir))
    sets = ["schedule.epochs=3", "averaging.from_epoch=2"]
    whole = recipe.run(recipe.load(path, sets), tmp_path / "whole", show_progress=False)
    stage = tmp_path / "whole" / "1-train"
    rows = json.loads((stage / "metrics.json").read_text())
    assert [r["averaged_epochs"] for r in rows["history"]] == [0, 1, 2]
    assert rows["best"]["epoch"] in (2, 3)  # epoch 1 is validated for the log, never kept
    # the kept weights are the mean of epochs 2 and 3: not the last epoch's own
    ck, best = load_torch(stage / "checkpoint.pt"), load_torch(stage / "best.pt")
    last = ck["model"]["features.0.weight"]
    mean = ck["features"]["averaging"]["module.features.0.weight"]
    kept = best["model"]["features.0.weight"]
    assert not torch.equal(mean, last)
    assert torch.equal(kept, mean) if rows["best"]["epoch"] == 3 else not torch.equal(kept, last)
    plain = recipe.run(recipe.load(path, ["schedule.epochs=3"]), tmp_path / "plain", show_progress=False)
    prow = json.loads((tmp_path / "plain" / "1-train" / "metrics.json").read_text())["history"]
    # the same training path (the mean is only validated and kept); epoch 2's mean is epoch 2's model
    assert [r["train_loss"] for r in prow] == [r["train_loss"] for r in rows["history"]]
    assert prow[1]["val_loss"] == rows["history"][1]["val_loss"] and prow[2]["val_loss"] != rows["history"][2]["val_loss"]
    stopped = recipe.run(recipe.load(path, sets), tmp_path / "cut", show_progress=False, stop_after_batches=9)
    assert stopped.get("stopped")
    assert int(load_torch(tmp_path / "cut" / "1-train" / "checkpoint.pt")["features"]["averaging"]["n_averaged"]) == 1  # cut in epoch 3
    done = recipe.run(recipe.read_run_recipe(tmp_path / "cut"), tmp_path / "cut", resume=True, show_progress=False)
    assert Path(done["model"]).read_bytes() == Path(whole["model"]).read_bytes()


def test_a_graded_stage_distils_from_the_frozen_teacher_and_resumes_exactly(synth_dir, tmp_path):
    sets = ["losses.distill.weight=0.5"]  # half the loss: the KL divergence to the frozen teacher's answers
    from training import recipe
    from training.checkpoint import load_torch

    path = tmp_path / "g.toml"
    path.write_text(GRADED_RECIPE.format(root=synth_dir))
    plain = recipe.run(recipe.load(path), tmp_path / "plain", show_progress=False)
    whole = recipe.run(recipe.load(path, sets), tmp_path / "whole", show_progress=False)
    # the same teacher (trained first, then frozen: distillation does not move it)
    teachers = [load_torch(tmp_path / d / "teacher.pt")["model"] for d in ("plain", "whole")]
    assert all(torch.equal(teachers[0][k], teachers[1][k]) for k in teachers[0])
    rows = [json.loads((tmp_path / d / "1-train" / "metrics.json").read_text())["history"] for d in ("plain", "whole")]
    assert rows[0][0]["train_loss"] != rows[1][0]["train_loss"]
    assert Path(whole["model"]).read_bytes() != Path(plain["model"]).read_bytes()
    stopped = recipe.run(recipe.load(path, sets), tmp_path / "cut", show_progress=False, stop_after_batches=5)
    assert stopped.get("stopped")
    done = recipe.run(recipe.read_run_recipe(tmp_path / "cut"), tmp_path / "cut", resume=True, show_progress=False)
    assert Path(done["model"]).read_bytes() == Path(whole["model"]).read_bytes()


def test_the_activation_loss_weighs_each_layer_by_its_own_scale():
    from training.graded import activation_loss

    t = [torch.ones(2, 3, 4, 4), 100 * torch.ones(2, 5, 2, 2)]
    assert float(activation_loss(t, t)) == 0.0
    # each layer off by a tenth of itself: 0.01 each, whatever the layer's scale
    assert float(activation_loss([0.9 * t[0], 1.1 * t[1]], t)) == pytest.approx(0.01)
    # one layer silenced: (1 + 0) / 2
    assert float(activation_loss([torch.zeros_like(t[0]), t[1]], t)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="1 student layers against 2"):
        activation_loss(t[:1], t)


def test_a_graded_stage_held_to_the_teachers_activations_stays_nearer_them(synth_dir, synth_images, tmp_path):
    from training import recipe
    from training.checkpoint import load_torch
    from training.distill import Teacher, load_teacher
    from training.graded import activation_loss, forward
    from lava_allnet.config import ModelConfig

    path = tmp_path / "g.toml"
    path.write_text(GRADED_RECIPE.format(root=synth_dir))
    errors = {}
    for name, sets in (("plain", ["teacher.epochs=4"]), ("held", ["teacher.epochs=4", "losses.activations.weight=50"])):
        recipe.run(recipe.load(path, sets), tmp_path / name, show_progress=False)
        best = load_torch(tmp_path / name / "1-train" / "best.pt")
        cfg = ModelConfig.from_dict(best["config"])
        student, teacher = Teacher(cfg), load_teacher(tmp_path / name / "teacher.pt", cfg)
        student.load_state_dict(best["model"])
        x = torch.from_numpy(synth_images[0])
        with torch.no_grad():
            errors[name] = float(activation_loss(forward(student.eval(), x, best["quant"])[1], forward(teacher.eval(), x)[1]))
    # the deployed network's messages (running statistics) nearer the teacher's on the same images
    assert errors["held"] < errors["plain"], errors


def test_a_recipe_trains_its_teacher_with_the_consistency_term_when_asked(synth_dir, tmp_path):
    from training import recipe
    from training.checkpoint import load_torch

    path = tmp_path / "g.toml"
    path.write_text(GRADED_RECIPE.format(root=synth_dir))
    runs = {}
    for name, sets in (("plain", []), ("held", ["teacher.consistency=1.0"])):
        recipe.run(recipe.load(path, sets), tmp_path / name, show_progress=False, stop_after_batches=1)
        runs[name] = load_torch(tmp_path / name / "teacher.pt")
    assert runs["held"]["metrics"]["consistency"] == 1.0 and "consistency" not in runs["plain"]["metrics"]
    a, b = runs["plain"]["model"], runs["held"]["model"]
    assert not all(torch.equal(a[k], b[k]) for k in a)


def test_outside_cells_is_the_share_of_activation_energy_off_the_cells():
    from training.distill import outside_cells

    cells = torch.zeros(2, 1, 8, 8)
    cells[:, :, :4] = 1  # the top half of each image is cell
    on = torch.zeros(2, 3, 4, 4)
    on[:, :, :2] = 1.5
    assert float(outside_cells({1: on}, cells)) == 0.0
    assert float(outside_cells({1: 1 - on / 1.5}, cells)) == pytest.approx(1.0)
    # uniform activity: the area outside, at any map size; layers averaged
    assert float(outside_cells({1: torch.ones(2, 3, 4, 4), 2: torch.ones(2, 5, 2, 2), 3: on}, cells)) == pytest.approx(1 / 3)


def test_a_teacher_trained_with_the_cells_term_looks_less_outside_the_cells(synth_dir, synth_images, tmp_path):
    from lava_allnet.config import ModelConfig
    from training import recipe
    from training.augment import cell_mask
    from training.checkpoint import load_torch
    from training.distill import CELL_LAYERS, Teacher, outside_cells

    path = tmp_path / "g.toml"
    path.write_text(GRADED_RECIPE.format(root=synth_dir))
    x = torch.from_numpy(synth_images[0])
    shares = {}
    for name, sets in (("plain", ["teacher.epochs=4"]), ("cells", ["teacher.epochs=4", "teacher.cells=50"])):
        recipe.run(recipe.load(path, sets), tmp_path / name, show_progress=False, stop_after_batches=1)
        ck = load_torch(tmp_path / name / "teacher.pt")
        teacher = Teacher(ModelConfig.from_dict(ck["config"]))
        teacher.load_state_dict(ck["model"])
        with torch.no_grad():
            acts = teacher.eval().forward_features(x, CELL_LAYERS)[1]
        shares[name] = float(outside_cells(acts, cell_mask(x).float()))
        assert ("cells" in ck["metrics"]) == (name == "cells")
    assert shares["cells"] < shares["plain"] - 0.02, shares  # measured: 0.830 against 0.875


@pytest.mark.parametrize("sets, message", [
    (["schedule.init=scratch"], 'set schedule.init = "teacher"'),
    (["losses.rate.weight=1.0"], "losses.rate.weight apply to the spiking network only"),
    (["model.family=analog"], "model.family 'analog'"),
    (["graded.threshold=0"], "graded.threshold 0.0: must be above 0"),
    (["losses.activations.weight=-1"], "losses.activations.weight -1.0: 0 (off) or above"),
    (["model.family=spiking", "schedule.init=scratch", "losses.activations.weight=1"],
     'losses.activations.weight: applies to model.family "graded" only'),
    (["teacher.cells=-1"], "teacher.cells -1.0: 0 (off) or above"),
])
def test_graded_recipe_errors_name_the_key(synth_dir, tmp_path, sets, message):
    from lava_allnet.errors import AllnetError
    from training import recipe

    path = tmp_path / "g.toml"
    path.write_text(GRADED_RECIPE.format(root=synth_dir))
    with pytest.raises(AllnetError, match=re.escape(message)):
        recipe.load(path, sets)


def test_the_float_simulator_and_loihi2_refuse_a_graded_model_in_one_line(graded_file, synth_images):
    img = str(synth_images[1][0])
    for args, says in ((["run", str(graded_file), img, "--backend", "sim-float"], "graded model is integer"),
                       (["verify", str(graded_file), img, "--sim-float"], "graded model is integer"),
                       (["run", str(graded_file), img, "--backend", "loihi2"], "needs a Loihi 2 neuron microcode")):
        r = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and r.stderr.strip().startswith("error: ") and says in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_a_graded_model_is_refused_for_data_parallel_training_soups_and_spiking_inits(synth_dir, tmp_path):
    path = tmp_path / "g.toml"
    path.write_text(GRADED_RECIPE.format(root=synth_dir))
    r = subprocess.run([EXE, "train", "--recipe", str(path), "--nproc", "2", "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "a graded stage trains in one process" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()
    from lava_allnet.errors import AllnetError
    from training import recipe
    from training.soup import soup

    for name in ("one", "two"):
        recipe.run(recipe.load(path, ["schedule.epochs=1"]), tmp_path / name, show_progress=False)
    with pytest.raises(AllnetError, match="a graded run"):
        soup([tmp_path / "one", tmp_path / "two"], tmp_path / "soup")
    # nor can a spiking stage start from a graded model, file or checkpoint
    assert nf.read(tmp_path / "one" / "model.net").model_config["name"] == "neurallnet-demo"
    for init in (tmp_path / "one" / "model.net", tmp_path / "one" / "1-train" / "best.pt"):
        sets = ["model.family=spiking", f"schedule.init={json.dumps(str(init))}"]
        with pytest.raises(AllnetError, match="a spiking stage cannot start from it"):
            recipe.run(recipe.load(path, sets), tmp_path / f"s{init.suffix}", show_progress=False)
