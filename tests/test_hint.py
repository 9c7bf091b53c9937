"""Hints (training/hint.py): the adapter fit, the loss, and their place in a training run."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lava_allnet.config import TrainConfig, get_model_config
from lava_allnet.model import build_model
from training import distill, hint

EXE = str(Path(sys.executable).parent / "lava-allnet")


def _tiny():
    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    torch.manual_seed(0)
    net = build_model(cfg)
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (48, 3, 32, 32), generator=g, dtype=torch.uint8)
    net.calibrate(net.encode(images[:16]))
    teacher = distill.Teacher(cfg).eval()
    return cfg, net, teacher, images


def _loss(h, net, teacher, images):
    with torch.no_grad():
        out = net.eval()(net.encode(images), keep=h.keep())
        _, feats = teacher.forward_features(images, h.layers)
        return float(h.loss(out.activations, net, feats))


def test_stage_names_follow_the_se_gates_and_bad_layers_are_refused():
    cfg = get_model_config("neurallnet-tiny")  # SE after conv 3 and 4
    assert [hint.stage_name(cfg, k) for k in (1, 2, 3, 4)] == ["conv1", "conv2", "se3.scale", "se4.scale"]
    with pytest.raises(ValueError, match="conv layers 1..4"):
        hint.stage_name(cfg, 5)
    with pytest.raises(ValueError, match="0 \\(off\\) or above"):
        TrainConfig(hint_weight=-1.0)


def test_teacher_features_are_its_relu_outputs_on_the_students_grid():
    cfg, net, teacher, images = _tiny()
    logits, feats = teacher.forward_features(images[:4], (2, 3))
    assert torch.equal(logits, teacher(images[:4]))
    sizes = cfg.feature_sizes()
    assert feats[2].shape == (4, cfg.channels[1], sizes[1], sizes[1]) and feats[3].shape[1:] == (cfg.channels[2], sizes[2], sizes[2])
    assert float(feats[2].detach().min()) >= 0.0 and float(feats[2].detach().max()) > 0.0


def test_the_fit_is_the_least_squares_adapter_and_training_moves_the_features_towards_the_teacher():
    cfg, net, teacher, images = _tiny()
    h = hint.Hint(cfg, (2, 3))
    before = _loss(h, net, teacher, images[:32])  # random adapters
    residual = h.fit(net, teacher, images[:32], ridge=1e-6)
    fitted = _loss(h, net, teacher, images[:32])
    assert fitted < before
    assert fitted == pytest.approx(sum(residual.values()) / 2, rel=1e-3)
    # an optimum: any small change of an adapter raises the loss on the images it was fitted to
    for k in ("2", "3"):
        for p in h.adapters[k].parameters():
            saved = p.detach().clone()
            with torch.no_grad():
                p.add_(0.01 * torch.randn_like(p))
            assert _loss(h, net, teacher, images[:32]) > fitted
            with torch.no_grad():
                p.copy_(saved)
    # targets are scaled per channel: the fit leaves a loss below 1, the variance of the scaled target
    assert 0 < fitted < 1
    # trained with its adapters (as in a run), the student's features move towards the teacher's:
    # a fresh least-squares fit to them leaves less unexplained
    # (norm means held, as in the runs that use hints: training and evaluation compute one network)
    from training.loop import fix_norm_means

    fix_norm_means(net)
    net.train()
    opt = torch.optim.Adam([p for n, p in net.named_parameters() if n.startswith("blocks.conv")] + list(h.parameters()), lr=3e-3)
    for _ in range(30):
        out = net(net.encode(images[:32]), keep=h.keep())
        with torch.no_grad():
            _, feats = teacher.forward_features(images[:32], h.layers)
        loss = h.loss(out.activations, net, feats)
        opt.zero_grad()
        loss.backward()
        opt.step()
    refit = hint.Hint(cfg, (2, 3)).fit(net, teacher, images[:32], ridge=1e-6)
    assert sum(refit.values()) / 2 < fitted - 0.01


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from lava_allnet.data import synth

    d = tmp_path_factory.mktemp("hint-data")
    synth.generate_dataset(d, 8, size=32, seed=5)
    return d


def test_a_hinted_run_records_its_loss_resumes_exactly_and_exports_without_the_adapter(tiny_data, tmp_path):
    from netx import format as nf
    from netx.export import export
    from training.loop import load_trained, train

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    base = dict(epochs=2, batch_size=8, seed=1, distill_weight=0.5, teacher_epochs=2)
    ref = train(tmp_path / "ref", cfg, TrainConfig(**base, hint_weight=1.0, hint_layers=(2, 3)), data_dir=tiny_data, show_progress=False)
    assert all(r["hint_loss"] > 0 for r in ref["history"])
    run = tmp_path / "run"
    stopped = train(run, cfg, TrainConfig(**base, hint_weight=1.0, hint_layers=(2, 3)), data_dir=tiny_data,
                    show_progress=False, stop_after_batches=5)
    assert stopped["stopped"]
    resumed = train(run, resume=True, show_progress=False)
    strip = lambda h: [{k: v for k, v in r.items() if k != "seconds"} for r in h]  # noqa: E731
    assert strip(resumed["history"]) == strip(ref["history"])
    assert json.loads((run / "config.json").read_text())["train"]["hint_layers"] == [2, 3]
    # the term is in the loss: the same run without it trains differently
    plain = train(tmp_path / "plain", cfg, TrainConfig(**base), data_dir=tiny_data, show_progress=False)
    assert [r["train_loss"] for r in plain["history"]] != [r["train_loss"] for r in ref["history"]]
    assert "hint_loss" not in plain["history"][0]
    # the exported network is the plain one's shape: the adapter stays behind
    a, b = export(load_trained(run), tmp_path / "a.net"), export(load_trained(tmp_path / "plain"), tmp_path / "b.net")
    assert [type(x).__name__ for x in a.layers] == [type(x).__name__ for x in b.layers]
    assert sum(1 for _ in nf.read(tmp_path / "a.net").layers) == len(b.layers)


def test_cli_refuses_a_hint_layer_the_model_lacks(tiny_data, tmp_path):
    r = subprocess.run([EXE, "train", "--data", str(tiny_data), "--epochs", "1", "--out", str(tmp_path / "x"),
                        "--model", "neurallnet-tiny", "--input-size", "32", "--time-steps", "4",
                        "--hint", "1", "--hint-layers", "7"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "conv layers 1..4" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = subprocess.run([EXE, "train", "--data", str(tiny_data), "--epochs", "1", "--out", str(tmp_path / "y"),
                        "--hint", "1", "--hint-layers", "two"], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and "comma-separated" in r.stderr and "Traceback" not in r.stderr, r.stderr
