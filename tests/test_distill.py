"""Distillation from an ANN teacher: the loss, the teacher's training, and its place in a run."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lava_allnet.config import ModelConfig
from training.config import TrainConfig
from training import distill


def test_distillation_loss_is_zero_only_at_the_teacher_and_pulls_the_student_towards_it():
    teacher = torch.tensor([[4.0, 1.0, 0.0, -2.0], [0.0, 3.0, 0.5, 0.5]])
    assert distill.distillation_loss(teacher.clone(), teacher, 2.0).item() < 1e-6
    # a constant shift per row does not change the probabilities
    assert distill.distillation_loss(teacher + 5.0, teacher, 2.0).item() < 1e-6
    student = torch.zeros_like(teacher, requires_grad=True)
    before = distill.distillation_loss(student, teacher, 2.0)
    assert before.item() > 0.1
    before.backward()
    with torch.no_grad():
        stepped = student - 1.0 * student.grad
    assert distill.distillation_loss(stepped, teacher, 2.0).item() < before.item()
    # the T² factor keeps the gradient's size independent of T (for small logits, where it is (s - t) / K)
    s1 = torch.zeros_like(teacher, requires_grad=True)
    distill.distillation_loss(s1, teacher * 0.01, 1.0).backward()
    s4 = torch.zeros_like(teacher, requires_grad=True)
    distill.distillation_loss(s4, teacher * 0.01, 4.0).backward()
    assert abs(s4.grad.norm() / s1.grad.norm() - 1) < 0.05  # without T² it would be 1/16


def _bright_dark(n: int, size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    base = torch.where(labels[:, None, None, None] == 1, 170.0, 80.0)
    images = (base + 30 * torch.randn(n, 3, size, size, generator=g)).clamp(0, 255).to(torch.uint8)
    return images, labels


def test_teacher_has_the_student_shape_and_learns():
    cfg = ModelConfig(name="t", input_size=32, channels=(8, 16), strides=(2, 2), se=(False, False),
                      num_classes=2, class_names=("dark", "bright"), population=2)
    teacher = distill.Teacher(cfg)
    convs = [m for m in teacher.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [8, 16] and [c.stride for c in convs] == [(2, 2), (2, 2)]
    images, labels = _bright_dark(128)
    idx = torch.arange(128)

    def gen(*key):
        return torch.Generator().manual_seed(hash(key) % 2**31)

    trained, metrics = distill.train_teacher(cfg, images, labels, idx[:96], idx[96:], epochs=8, seed=0, gen=gen,
                                             log=lambda _m: None)
    assert trained(images[:5]).shape == (5, 2)
    assert metrics["val_accuracy"] == 1.0 and metrics["train_accuracy"] == 1.0


def test_a_distilled_run_trains_its_teacher_once_and_resumes_with_it(tmp_path):
    from lava_allnet.data import synth
    from training.trainer import train

    data = tmp_path / "data"
    synth.generate_dataset(data, 8, size=32, seed=5)
    from lava_allnet.config import get_model_config

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    tcfg = TrainConfig(epochs=2, batch_size=8, seed=1, distill_weight=0.5, teacher_epochs=2)
    run = tmp_path / "run"
    stopped = train(run, cfg, tcfg, data_dir=data, show_progress=False, stop_after_batches=2)
    assert stopped["stopped"]
    teacher_file = run / "teacher.pt"
    saved = torch.load(teacher_file, map_location="cpu", weights_only=False)
    assert set(saved["metrics"]) >= {"train_accuracy", "val_accuracy", "epochs"}
    stamp = teacher_file.stat().st_mtime_ns
    metrics = train(run, resume=True, show_progress=False)
    assert metrics["epochs_done"] == 2
    assert teacher_file.stat().st_mtime_ns == stamp  # reloaded, not retrained
    assert json.loads((run / "config.json").read_text())["train"]["distill_weight"] == 0.5
    # the same run without distillation follows another path: the term is really in the loss
    plain = train(tmp_path / "plain", cfg, TrainConfig(epochs=2, batch_size=8, seed=1), data_dir=data,
                  show_progress=False)
    assert [r["train_loss"] for r in plain["history"]] != [r["train_loss"] for r in metrics["history"]]
    assert not (tmp_path / "plain" / "teacher.pt").exists()
    assert Path(run / "best.pt").exists()


def test_init_teacher_starts_the_student_from_the_teachers_features(tmp_path):
    """schedule.init = "teacher": the teacher is trained first (no distillation needed), each conv
    starts as the teacher's with its batch-norm scale folded in, up to the one factor per layer that
    the rate calibration sets, and the output layer repeats the head over each population."""
    import io

    from rich.console import Console

    from lava_allnet.config import get_model_config
    from lava_allnet.data import synth
    from training import recipe as rc
    from training.trainer import Trainer, prepare_data, resolve_device

    data = tmp_path / "data"
    synth.generate_dataset(data, 8, size=32, seed=5)
    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4, class_names=("Benign", "Early", "Pre", "Pro"))
    recipe = rc.resolve({"name": "t", "schedule": {"init": "teacher", "batch_size": 8}, "teacher": {"epochs": 2}},
                        "test", tmp_path)
    tcfg = rc.compile_stage(recipe["stages"][0], 1)[1]
    assert tcfg.init_teacher and tcfg.init_from == "" and tcfg.distill_weight == 0
    run = tmp_path / "run"
    run.mkdir()
    log = io.StringIO()
    console = Console(file=log, width=200)
    t = Trainer(run, cfg, tcfg, prepare_data(run, data, cfg, tcfg, 8, console), resolve_device("cpu"), console,
                resuming=False, fast=True, show_progress=False)
    t.setup()
    assert "training the ANN distillation teacher" in log.getvalue()
    assert "starting from the ANN teacher's features" in log.getvalue()
    teacher = distill.load_teacher(run / tcfg.teacher_path, cfg)  # the recipe run directory's teacher.pt
    convs = [m for m in teacher.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in teacher.features if isinstance(m, torch.nn.BatchNorm2d)]
    for i, (conv, bn) in enumerate(zip(convs, norms), start=1):
        folded = (conv.weight * (bn.weight / (bn.running_var + bn.eps).sqrt()).view(-1, 1, 1, 1)).detach()
        w = t.net.blocks[f"conv{i}"].synapse.weight.detach().reshape(folded.shape)
        ratio = w[folded.abs() > 1e-3] / folded[folded.abs() > 1e-3]
        assert ratio.min() > 0 and torch.allclose(ratio, ratio.mean(), rtol=1e-4), f"conv{i}"
    fc = t.net.blocks["fc"].synapse.weight.detach().reshape(cfg.num_classes * cfg.population, -1)
    head = teacher.head.weight.detach()
    for k in range(cfg.num_classes):
        rows = fc[k * cfg.population:(k + 1) * cfg.population]
        assert torch.allclose(rows[0] / rows[0].norm(), head[k] / head[k].norm(), atol=1e-5)
        assert torch.allclose(rows, rows[0].expand_as(rows))


def test_js_divergence_is_zero_only_for_equal_predictions_symmetric_and_at_most_ln2():
    a = torch.tensor([[3.0, 0.0, -1.0, 0.5], [0.0, 2.0, 0.0, 0.0]])
    assert distill.js_divergence(a, a + 4.0).item() < 1e-6  # a shift per row leaves the probabilities alone
    b = torch.tensor([[0.0, 3.0, -1.0, 0.5], [2.0, 0.0, 0.0, 0.0]])
    assert distill.js_divergence(a, b).item() > 0.05
    assert abs(distill.js_divergence(a, b).item() - distill.js_divergence(b, a).item()) < 1e-6
    far = torch.tensor([[40.0, 0.0], [0.0, 40.0]])
    assert abs(distill.js_divergence(far, far.flip(1)).item() - torch.log(torch.tensor(2.0)).item()) < 1e-3


def test_a_consistency_teacher_sees_two_draws_of_each_batch_repeats_exactly_and_needs_draws():
    import pytest
    from lava_allnet.errors import AllnetError
    from training.augment import Photometric

    cfg = ModelConfig(name="t", input_size=32, channels=(8, 16), strides=(2, 2), se=(False, False),
                      num_classes=2, class_names=("dark", "bright"), population=2)
    images, labels = _bright_dark(64)
    idx = torch.arange(64)
    draws = Photometric(gain=(0.6, 1.4), noise=8.0)
    seen = []

    def prepare(x, g):
        if g is not None:
            seen.append(x.shape[0])
        return (draws(x, g) if g is not None else x).float() / 255

    def gen(*key):
        return torch.Generator().manual_seed(hash(key) % 2**31)

    def fit(w):
        seen.clear()
        return distill.train_teacher(cfg, images, labels, idx[:48], idx[48:], epochs=2, seed=0, gen=gen,
                                     log=lambda _m: None, prepare=prepare, consistency=w)

    plain, m0 = fit(0.0)
    assert seen == [16] * 6 and "consistency" not in m0  # one draw per batch
    held, m1 = fit(1.0)
    assert seen == [16] * 12 and m1["consistency"] == 1.0  # two independent draws per batch
    again, _ = fit(1.0)
    state = [held.state_dict(), again.state_dict(), plain.state_dict()]
    assert all(torch.equal(state[0][k], state[1][k]) for k in state[0])
    assert not all(torch.equal(state[0][k], state[2][k]) for k in state[0])
    with pytest.raises(AllnetError, match="needs the photometric draws"):
        distill.train_teacher(cfg, images, labels, idx[:48], idx[48:], epochs=1, seed=0, gen=gen,
                              log=lambda _m: None, consistency=1.0)
    with pytest.raises(ValueError, match=r"teacher.consistency 1.0: .* needs \[augment\] draws"):
        TrainConfig(teacher_consistency=1.0)
    with pytest.raises(ValueError, match="teacher.consistency -1.0"):
        TrainConfig(teacher_consistency=-1.0, aug_noise=4.0)
