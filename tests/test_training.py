"""Training: learns, is deterministic for a seed, checkpoints atomically and resumes after a kill."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

EXE = str(Path(sys.executable).parent / "lava-allnet")
# a one-stage recipe (its stage directory is RUN/1-train) of the tiny config, set from the command line
TINY = ["model.name=neurallnet-tiny", "model.input_size=32", "model.time_steps=4", "schedule.batch_size=8",
        "schedule.seed=3"]
RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "demo.toml"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    from lava_allnet.data import synth

    d = tmp_path_factory.mktemp("tiny-data")
    synth.generate_dataset(d, 12, size=32, seed=11)
    return d


def _train(out, data, *sets, env=None, recipe=RECIPE):
    """``lava-allnet train --recipe recipe --set data.root=DATA --set ... --out OUT`` (the tiny config)."""
    args = ["--recipe", str(recipe), "--set", f"data.root={data}", "--set", "schedule.epochs=1", "--out", str(out)]
    for item in (*TINY, *sets):
        args += ["--set", item]
    return subprocess.run([EXE, "train", *args], capture_output=True, text=True, env=env, timeout=600)


def _resume(run, env=None):
    return subprocess.run([EXE, "train", "--resume", str(run)], capture_output=True, text=True, env=env, timeout=600)


def _timeless(history: list[dict]) -> list[dict]:
    """Epoch rows without their wall-clock seconds: what a rerun or a resumed run must repeat exactly."""
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


def _history(run: Path) -> list[dict]:
    return _timeless(json.loads((run / "metrics.json").read_text())["history"])


def _stage(run: Path, i: int = 1, name: str = "train") -> Path:
    return run / f"{i}-{name}"


def test_same_seed_same_metrics(tiny_data, tmp_path):
    a = _train(tmp_path / "a", tiny_data, "schedule.epochs=2")
    assert a.returncode == 0, a.stderr
    b = _train(tmp_path / "b", tiny_data, "schedule.epochs=2")
    assert b.returncode == 0, b.stderr
    assert _history(_stage(tmp_path / "a")) == _history(_stage(tmp_path / "b"))
    assert (tmp_path / "a" / "model.net").read_bytes() == (tmp_path / "b" / "model.net").read_bytes()
    for name in ("config.json", "classes.json", "split.json", "best.pt", "checkpoint.pt", "metrics.json", "model.net"):
        assert (_stage(tmp_path / "a") / name).exists(), name
    for name in ("recipe.toml", "split.json", "model.net", "metrics.json"):
        assert (tmp_path / "a" / name).exists(), name
    # refusing to overwrite a run is a clear error
    c = _train(tmp_path / "a", tiny_data)
    assert c.returncode == 2 and "already holds a training run" in c.stderr


TWO_STAGES = """
name = "two"
[data]
root = "synthetic"
synthetic_per_class = 12
[model]
name = "neurallnet-tiny"
input_size = 32
time_steps = 4
[schedule]
epochs = 1
batch_size = 2
seed = 3
lr = 1e-2
[[stages]]
name = "first"
[[stages]]
name = "second"
[stages.schedule]
lr = 2e-3
"""


def test_two_stage_recipe_killed_mid_epoch_resumes_to_the_uninterrupted_result(tmp_path):
    # batches of 2 (19 per epoch): the kill window after batch 2 of stage 2 must outlast a poll even
    # on a fast, idle machine
    recipe = tmp_path / "two.toml"
    recipe.write_text(TWO_STAGES)
    ref = subprocess.run([EXE, "train", "--recipe", str(recipe), "--out", str(tmp_path / "ref")],
                         capture_output=True, text=True, timeout=600)
    assert ref.returncode == 0, ref.stderr
    env = {**os.environ, "LAVA_ALLNET_CHECKPOINT_EVERY_S": "0"}  # checkpoint after every batch
    run = tmp_path / "killed"
    proc = subprocess.Popen([EXE, "train", "--recipe", str(recipe), "--out", str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt = run / "2-second" / "checkpoint.pt"
    deadline = time.time() + 300
    killed_at = None
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            try:
                state = torch.load(ckpt, map_location="cpu", weights_only=False)["state"]
            except Exception:  # being replaced right now: atomic rename makes this rare
                state = None
            if state and state["epoch"] == 0 and state["batch"] >= 2:
                proc.send_signal(signal.SIGKILL)
                killed_at = (state["epoch"], state["batch"])
                break
        time.sleep(0.01)
    proc.wait(timeout=60)
    assert killed_at is not None, "training finished before it could be killed mid-epoch"
    assert (run / "1-first" / "model.net").exists() and not (run / "2-second" / "metrics.json").exists()
    resumed = _resume(run, env=env)
    assert resumed.returncode == 0, resumed.stderr
    assert "stage 1/2 (first): done" in resumed.stderr and "resuming at epoch 1, batch" in resumed.stderr
    for stage in ("1-first", "2-second"):
        assert _history(run / stage) == _history(tmp_path / "ref" / stage), stage
    # the second stage started from the first's weights, and the final model is the same file
    assert "starting from" in (ref.stderr) and str(tmp_path / "ref" / "1-first" / "best.pt") in ref.stderr
    assert (run / "model.net").read_bytes() == (tmp_path / "ref" / "model.net").read_bytes()


def test_training_learns_above_chance(tmp_path):
    """A few epochs on fresh synthetic smears (no --data) beat chance (0.25) clearly.

    Measured: best validation accuracy 0.58 (120 images; chance + 0.13 is > 5 standard errors).
    """
    from lava_allnet.config import get_model_config
    from training.config import SYNTH_LR, TrainConfig
    from training.trainer import train

    cfg = get_model_config("neurallnet-demo")  # 96 px: smaller images lose the morphology
    m = train(tmp_path / "run", cfg, TrainConfig(epochs=4, seed=0, lr=SYNTH_LR), synth_per_class=150,
              show_progress=False)
    assert m["best"]["val_accuracy"] >= 0.45, m["history"]


def test_device_errors_are_clear(tiny_data, tmp_path):
    from lava_allnet.errors import AllnetError
    from training.trainer import resolve_device

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(AllnetError, match="not a torch device"):
        resolve_device("gpu0")
    with pytest.raises(AllnetError, match="cpu or cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        r = subprocess.run([EXE, "train", "--recipe", str(RECIPE), "--out", str(tmp_path / "c"), "--device", "cuda"],
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and "no CUDA GPU" in r.stderr, r.stderr
        assert not (tmp_path / "c").exists()  # refused before anything is written


def test_without_cpu_kernels_training_is_identical(tiny_data, tmp_path, monkeypatch):
    # Off the CPU (CUDA) the C++ kernels do not apply and SLAYER's own torch code
    # runs the neurons: the same integer arithmetic, so the same run, bit for bit.
    from lava_allnet.config import get_model_config
    from training.config import TrainConfig
    from lava_allnet.kernels import fast_cuba
    from training.trainer import train

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    tc = TrainConfig(epochs=2, batch_size=8, seed=3, distill_weight=0.5, teacher_epochs=1, color_jitter=1.0)
    fast = train(tmp_path / "fast", cfg, tc, data_dir=tiny_data, show_progress=False)
    assert fast["fast_cpu_dynamics"] and fast["device"] == "cpu"
    monkeypatch.setattr(fast_cuba, "_ops", None)
    monkeypatch.setattr(fast_cuba, "_load_attempted", True)
    stock = train(tmp_path / "stock", cfg, tc, data_dir=tiny_data, show_progress=False)
    assert not stock["fast_cpu_dynamics"]
    assert _history(tmp_path / "fast") == _history(tmp_path / "stock")
    saved = json.loads((tmp_path / "fast" / "config.json").read_text())["train"]
    assert saved["device"] == "cpu" and saved["color_jitter"] == 1.0


def test_weight_average_is_the_mean_of_epoch_ends():
    # what --average-from relies on: torch's AveragedModel, as the loop uses it, keeps the plain mean
    from torch.optim.swa_utils import AveragedModel

    net = torch.nn.Linear(3, 2)
    avg = AveragedModel(net)
    seen = []
    for k in range(4):
        with torch.no_grad():
            net.weight.fill_(float(k))
            net.bias.fill_(2.0 * k)
        avg.update_parameters(net)
        seen.append(net.weight.detach().clone())
    target = avg.module
    assert torch.allclose(target.weight, torch.stack(seen).mean(0)) and torch.allclose(target.bias, torch.full((2,), 3.0))
    again = AveragedModel(torch.nn.Linear(3, 2))  # as restored from a checkpoint
    again.load_state_dict(avg.state_dict())
    assert int(again.n_averaged) == 4 and torch.equal(again.module.weight, avg.module.weight)


def test_averaged_run_validates_the_average_and_resumes_exactly(tiny_data, tmp_path):
    from lava_allnet.config import get_model_config
    from training.config import TrainConfig
    from training.trainer import train

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    tc = TrainConfig(epochs=3, batch_size=8, seed=3, average_from=2)
    ref = train(tmp_path / "ref", cfg, tc, data_dir=tiny_data, show_progress=False)
    assert [r["averaged_epochs"] for r in ref["history"]] == [0, 1, 2]
    assert ref["best"]["averaged_epochs"] > 0  # epoch 1 is validated for the log, never kept
    plain = train(tmp_path / "plain", cfg, TrainConfig(epochs=3, batch_size=8, seed=3), data_dir=tiny_data,
                  show_progress=False)
    # same training path (the average is only validated), different validated model from epoch 3 on
    assert [r["train_loss"] for r in plain["history"]] == [r["train_loss"] for r in ref["history"]]
    assert plain["history"][1]["val_loss"] == ref["history"][1]["val_loss"]  # a one-epoch mean is the model
    assert plain["history"][2]["val_loss"] != ref["history"][2]["val_loss"]
    # killed in epoch 3 (the average holds one epoch) and resumed: the same history
    run = tmp_path / "killed"
    stopped = train(run, cfg, tc, data_dir=tiny_data, show_progress=False, stop_after_batches=12)
    assert stopped["epoch"] == 2 and stopped["batch"] > 0  # 5 batches an epoch
    resumed = train(run, resume=True, show_progress=False)
    assert _timeless(resumed["history"]) == _timeless(ref["history"])


def test_keep_norm_trains_under_the_init_models_means(tiny_data, tmp_path):
    from lava_allnet.config import get_model_config
    from training.config import TrainConfig
    from training.checkpoint import load_torch
    from training.trainer import train

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    train(tmp_path / "a", cfg, TrainConfig(epochs=1, batch_size=8, seed=3), data_dir=tiny_data, show_progress=False)
    init = str(tmp_path / "a" / "best.pt")
    start = load_torch(init)["model"]
    train(tmp_path / "k", cfg, TrainConfig(epochs=2, batch_size=8, seed=3, init_from=init, norm_means="keep"),
          data_dir=tiny_data, show_progress=False)
    trained = load_torch(tmp_path / "k" / "best.pt")["model"]
    norm_keys = [k for k in start if k.endswith("running_mean")]
    assert norm_keys and all(torch.equal(trained[k], start[k]) for k in norm_keys)
    assert any(not torch.equal(trained[k], start[k]) for k in start if k not in norm_keys)  # the weights learned
    with pytest.raises(ValueError, match="keeps the means of the init model: set schedule.init"):
        TrainConfig(epochs=1, norm_means="keep")


def test_norm_means_options_are_checked_and_old_run_configs_load():
    from training.config import TrainConfig

    with pytest.raises(ValueError, match="one of batch, fixed, keep"):
        TrainConfig(norm_means="frozen")
    with pytest.raises(ValueError, match="start from held means"):
        TrainConfig(learn_biases=True)
    # runs saved before norm_means held two booleans; --resume must still read them
    old = {**TrainConfig(init_from="best.pt").to_dict(), "fixed_norm": True, "keep_norm": False}
    del old["norm_means"], old["learn_biases"]
    assert TrainConfig.from_dict(old).norm_means == "fixed"
    assert TrainConfig.from_dict({**old, "fixed_norm": False, "keep_norm": True}).norm_means == "keep"
    assert TrainConfig.from_dict({**old, "fixed_norm": False}).norm_means == "batch"
    kept = TrainConfig(norm_means="keep", learn_biases=True, init_from="best.pt")
    assert TrainConfig.from_dict(kept.to_dict()).learn_biases
    # runs of the retired research options (at their off values) still load; switched on, a clear error
    retired = {"hint_weight": 0.0, "hint_layers": [3], "freeze_through": 0, "freeze_weights": False, "gain_lr": False}
    assert TrainConfig.from_dict({**old, **retired}).norm_means == "fixed"
    with pytest.raises(ValueError, match=r"moved to research/ \(freeze_through, hint_weight\)"):
        TrainConfig.from_dict({**old, **retired, "hint_weight": 1.0, "freeze_through": 3})


def test_learned_bias_gradient_is_the_same_on_the_fused_and_the_plain_path(monkeypatch):
    # the fused CPU kernel returns the bias gradient itself (minus the input's, summed over N and T);
    # the plain torch path (GPU, or no extension) gets it from autograd through current - bias
    from lava_allnet.config import get_model_config
    from lava_allnet.model import build_model
    from lava_allnet.kernels import fast_cuba
    from training.features import calibrate_norm_means, fix_norm_means, learn_norm_means
    from training.trainer import enable_fast_cpu

    if not enable_fast_cpu():
        pytest.skip("C++ extension not built")
    torch.manual_seed(0)
    net = build_model(get_model_config("neurallnet-tiny", input_size=32, time_steps=4))
    x = (torch.rand(6, 3, 32, 32) * 255).to(torch.uint8)
    net.calibrate(net.encode(x))
    calibrate_norm_means(net, x)
    with pytest.raises(ValueError, match="held first"):
        learn_norm_means(net)
    fix_norm_means(net)
    assert learn_norm_means(net) == 5
    net.train()

    def grads() -> tuple[dict, torch.Tensor]:
        net.zero_grad()
        out = net(net.encode(x))
        (out.class_counts * torch.arange(out.class_counts.shape[1])).sum().backward()
        return {n: p.grad.clone() for n, p in net.named_parameters() if n.endswith("running_mean")}, out.class_counts

    fused, counts = grads()
    monkeypatch.setattr(fast_cuba, "fused_ok", lambda *a: False)
    plain, plain_counts = grads()
    assert torch.equal(counts, plain_counts) and len(fused) == 5
    for k in fused:
        assert fused[k].abs().max() > 0, k
        # float32 sums in another order differ by an ulp of the partial sums, not of each element:
        # an element that cancels to 1/300 of the layer's largest differs by ~3e-5 of itself
        torch.testing.assert_close(fused[k], plain[k], rtol=1e-5, atol=1e-5 * float(plain[k].abs().max()))


def _tiny_start(tiny_data, tmp_path):
    """A tiny model trained for one epoch: (config, its best.pt, its state dict), to fine-tune from."""
    from lava_allnet.config import get_model_config
    from training.config import TrainConfig
    from training.checkpoint import load_torch
    from training.trainer import train

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    train(tmp_path / "a", cfg, TrainConfig(epochs=1, batch_size=8, seed=3), data_dir=tiny_data, show_progress=False)
    init = str(tmp_path / "a" / "best.pt")
    return cfg, init, load_torch(init)["model"]


def _moved_biases(start: dict, trained: dict) -> list[str]:
    """The batch-norm means whose deployed bias mantissas (on Lava's grid) differ."""
    from lava_allnet.fixed_point import bias_mantissa_from_mean

    return [k for k in start if k.endswith("running_mean")
            and not np.array_equal(bias_mantissa_from_mean(trained[k]), bias_mantissa_from_mean(start[k]))]


def test_learned_biases_train_and_resume_exactly(tiny_data, tmp_path):
    from training.config import TrainConfig
    from training.checkpoint import load_torch
    from training.trainer import train

    cfg, init, start = _tiny_start(tiny_data, tmp_path)
    tc = TrainConfig(epochs=2, batch_size=8, seed=3, lr=0.05, init_from=init, norm_means="keep", learn_biases=True)
    ref = train(tmp_path / "ref", cfg, tc, data_dir=tiny_data, show_progress=False)
    trained = load_torch(tmp_path / "ref" / "checkpoint.pt")["model"]  # the last epoch's weights
    # the deployed biases (bias mantissas on Lava's grid) moved, not only the float means
    assert _moved_biases(start, trained)
    run = tmp_path / "killed"
    train(run, cfg, tc, data_dir=tiny_data, show_progress=False, stop_after_batches=7)
    resumed = train(run, resume=True, show_progress=False)
    assert _timeless(resumed["history"]) == _timeless(ref["history"])
    cli = _train(tmp_path / "cli", tiny_data, "biases.learn=true")
    assert cli.returncode == 2 and "start from held means" in cli.stderr and "biases.learn" in cli.stderr


def test_bias_adam_eps_unfreezes_the_biases_alone(tiny_data, tmp_path):
    # the learned biases' gradients sit below Adam's eps as the early weights' do; a bias-only
    # epsilon gives them Adam's full step and leaves the weights' brake in place
    from training.config import TrainConfig
    from training.checkpoint import load_torch
    from training.trainer import train

    cfg, init, start = _tiny_start(tiny_data, tmp_path)
    base = dict(epochs=1, batch_size=8, seed=3, lr=0.01, init_from=init, norm_means="keep", learn_biases=True)
    shares, trained = {}, {}
    for name, extra in (("plain", {}), ("eps", {"bias_adam_eps": 1e-20})):
        h = train(tmp_path / name, cfg, TrainConfig(**base, **extra), data_dir=tiny_data, show_progress=False)
        shares[name] = h["history"][-1]["adam_step_share"]
        trained[name] = load_torch(tmp_path / name / "checkpoint.pt")["model"]
    bias_keys = [k for k in shares["eps"] if k.endswith(".bias")]
    # conv2/conv3's biases are braked by eps 1e-8 and take the full step at 1e-20 (conv1's
    # gradients vanish in this tiny, barely trained net), while those weights stay braked
    for layer in ("conv2", "conv3"):
        assert shares["plain"][f"{layer}.bias"] < 0.1 and shares["eps"][f"{layer}.bias"] > 0.99, shares
        assert shares["eps"][f"{layer}.weight"] < 0.01, shares["eps"]
    assert bias_keys and _moved_biases(start, trained["eps"])
    with pytest.raises(ValueError, match="set biases.learn"):
        TrainConfig(norm_means="keep", init_from="x", bias_adam_eps=1e-20)
    with pytest.raises(ValueError, match="above 0"):
        TrainConfig(norm_means="keep", init_from="x", learn_biases=True, bias_adam_eps=-1.0)
    r = _train(tmp_path / "cli", tiny_data, "biases.adam_eps=1e-20")
    assert r.returncode == 2 and "set biases.learn" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_adam_step_share_shows_layers_below_eps_and_adam_eps_restores_them(tiny_data, tmp_path):
    # surrogate gradients shrink towards the input: below Adam's eps those layers take only
    # |g| / eps of the nominal step; metrics.json says so per layer, and --adam-eps fixes it
    from lava_allnet.config import get_model_config
    from training.config import TrainConfig
    from training.trainer import train

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    share = {}
    for eps in (1e-8, 1e-20):
        tc = TrainConfig(epochs=1, batch_size=8, seed=3, adam_eps=eps)
        share[eps] = train(tmp_path / f"e{eps}", cfg, tc, data_dir=tiny_data, show_progress=False)["history"][-1]["adam_step_share"]
    assert set(share[1e-8]) == {"conv1.weight", "conv2.weight", "conv3.weight", "conv4.weight", "fc.weight"}
    assert share[1e-8]["conv1.weight"] < 0.5 < share[1e-8]["fc.weight"]
    assert all(v > 0.99 for v in share[1e-20].values()), share[1e-20]
    with pytest.raises(ValueError, match="above 0"):
        TrainConfig(adam_eps=0.0)


def test_resume_on_another_device_records_it(tiny_data, tmp_path):
    # a run trained on a GPU and continued here must say so in config.json (no GPU needed:
    # the config is what a cuda run writes, and the override moves it to the CPU)
    from lava_allnet.config import get_model_config
    from training.config import TrainConfig
    from training.trainer import train

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    run = tmp_path / "moved"
    train(run, cfg, TrainConfig(epochs=2, batch_size=8, seed=3), data_dir=tiny_data, show_progress=False,
          stop_after_batches=3)
    saved = json.loads((run / "config.json").read_text())
    saved["train"]["device"] = "cuda"
    (run / "config.json").write_text(json.dumps(saved))
    done = train(run, resume=True, show_progress=False, device="cpu")
    assert done["device"] == "cpu" and done["epochs_done"] == 2
    assert json.loads((run / "config.json").read_text())["train"]["device"] == "cpu"


def test_calibrated_norm_means_do_not_depend_on_batching(tiny_data):
    # refresh_norm_stats centres earlier layers with batch means, so its result depends on how
    # images are batched; calibrate_norm_means is the inference means of the image set
    from lava_allnet.config import get_model_config
    from lava_allnet.data import images as di
    from lava_allnet.model import build_model
    from training.features import calibrate_norm_means, refresh_norm_stats

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    ds = di.scan_image_folder(tiny_data, class_names=None)
    x = torch.from_numpy(di.load_images(ds.paths, 32).images)
    torch.manual_seed(0)
    net = build_model(cfg)
    net.calibrate(net.encode(x[:16]))
    means = lambda: [b.neuron.norm.running_mean.clone() for b in net.blocks.values()  # noqa: E731
                     if getattr(getattr(b, "neuron", None), "norm", None) is not None]
    net.eval()
    assert calibrate_norm_means(net, x, batch=16) == len(means()) > 1
    assert not any(m.training for m in net.modules())  # the caller's mode is kept
    a = means()
    calibrate_norm_means(net, x.flip(0), batch=5)
    b = means()
    assert all(torch.allclose(u, v, rtol=1e-5, atol=1e-6) for u, v in zip(a, b))
    # only the named blocks' means: the others keep theirs, the named one gets the full calibration's
    last = [n for n, blk in net.blocks.items() if getattr(getattr(blk, "neuron", None), "norm", None) is not None][-1]
    for blk in net.blocks.values():
        if getattr(getattr(blk, "neuron", None), "norm", None) is not None:
            blk.neuron.norm.running_mean.add_(3.0)
    moved = means()
    assert calibrate_norm_means(net, x, batch=16, blocks=(last,)) == 1
    e = means()
    assert all(torch.equal(u, v) for u, v in zip(e[:-1], moved[:-1]))
    assert not torch.allclose(e[-1], moved[-1])
    calibrate_norm_means(net, x, batch=16)
    assert all(torch.allclose(u, v, rtol=1e-5, atol=1e-6) for u, v in zip(means(), a))
    refresh_norm_stats(net, x, batch=16)
    c = means()
    refresh_norm_stats(net, x.flip(0), batch=5)
    d = means()
    assert not all(torch.allclose(u, v, rtol=1e-5, atol=1e-6) for u, v in zip(c, d))


def test_fixed_norm_training_keeps_the_calibrated_means_and_resumes_exactly(tiny_data, tmp_path):
    from lava_allnet.config import get_model_config
    from training.config import TrainConfig
    from lava_allnet.model import build_model
    from training.checkpoint import load_torch
    from training.features import calibrate_norm_means
    from training.trainer import prepare_data, train

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    train(tmp_path / "a", cfg, TrainConfig(epochs=1, batch_size=8, seed=3), data_dir=tiny_data, show_progress=False)
    init = str(tmp_path / "a" / "best.pt")
    tc = TrainConfig(epochs=2, batch_size=8, seed=3, init_from=init, norm_means="fixed")
    ref = train(tmp_path / "ref", cfg, tc, data_dir=tiny_data, show_progress=False)
    # the means fixed at the start: those of the initial weights over all training images
    net = build_model(cfg)
    net.load_state_dict(load_torch(init)["model"])
    data = prepare_data(tmp_path / "ref", tiny_data, cfg, tc, 0)
    calibrate_norm_means(net, data.images[torch.from_numpy(data.split["train"])], batch=16)
    trained = load_torch(tmp_path / "ref" / "best.pt")["model"]
    start = net.state_dict()
    norm_keys = [k for k in start if k.endswith("running_mean")]
    assert norm_keys and all(torch.equal(trained[k], start[k]) for k in norm_keys)
    assert any(not torch.equal(trained[k], start[k]) for k in start if k not in norm_keys)  # the weights learned
    run = tmp_path / "killed"
    train(run, cfg, tc, data_dir=tiny_data, show_progress=False, stop_after_batches=7)
    resumed = train(run, resume=True, show_progress=False)
    assert _timeless(resumed["history"]) == _timeless(ref["history"])
    cli = _train(tmp_path / "cli", tiny_data, f"schedule.init={init}", "biases.means=fixed")
    assert cli.returncode == 0, cli.stderr
    assert json.loads((_stage(tmp_path / "cli") / "config.json").read_text())["train"]["norm_means"] == "fixed"
    assert "fixing the batch-norm means" in cli.stderr


def test_fine_tune_from_an_exported_model_on_a_saved_split(tiny_data, tmp_path):
    from lava_allnet.data import images as di
    from lava_allnet.config import get_model_config
    from training.config import TrainConfig
    from lava_allnet.model import build_model
    from netx.export import export
    from training.trainer import initial_weights, load_trained, train

    cfg = get_model_config("neurallnet-tiny", input_size=32, time_steps=4)
    train(tmp_path / "a", cfg, TrainConfig(epochs=1, batch_size=8, seed=3), data_dir=tiny_data, show_progress=False)
    trained = load_trained(tmp_path / "a")
    model = tmp_path / "a.net"
    export(trained, model)
    # the network rebuilt from the file counts exactly what the trained run does
    net = build_model(cfg)
    net.load_state_dict(initial_weights(model, cfg))
    net.eval()
    x = torch.from_numpy(di.load_images(di.scan_image_folder(tiny_data).paths[:16], 32).images)
    with torch.no_grad():
        assert torch.equal(net(net.encode(x)).class_counts, trained(trained.encode(x)).class_counts)
    # another seed would draw another split; --split keeps the exported run's images apart
    split = tmp_path / "a" / "split.json"
    r = _train(tmp_path / "b", tiny_data, f"schedule.init={model}", f"data.split={split}", "schedule.seed=7")
    assert r.returncode == 0, r.stderr
    assert "starting from" in r.stderr and "model config differs" not in r.stderr
    a, b = (json.loads(p.read_text()) for p in (split, _stage(tmp_path / "b") / "split.json"))
    assert all(a[k] == b[k] for k in ("train", "val")) and b["seed"] == 7
    # a config that differs from the file's is named (T is not in the weights, so it would pass silently)
    r = _train(tmp_path / "c", tiny_data, f"schedule.init={model}", "model.time_steps=6")
    assert r.returncode == 0, r.stderr
    assert "time_steps 4 → 6" in r.stderr and "channels" not in r.stderr


def test_init_rescales_layers_whose_threshold_gain_changes(se_model_file, synth_images):
    from lava_allnet import fixed_point as fx
    from lava_allnet.config import ModelConfig
    from lava_allnet.errors import AllnetError
    from lava_allnet.model import build_model
    from netx import format as nf
    from netx.export import network_from_spec
    from training.trainer import initial_weights, rescale_to_gains

    spec = nf.read(se_model_file)
    base = network_from_spec(spec)
    cfg = ModelConfig.from_dict({**spec.model_config, "threshold_gains": (1, 4, 1, 1)})
    state = initial_weights(se_model_file, cfg)
    old = base.state_dict()
    assert torch.equal(state["blocks.conv2.synapse.weight"], 4 * old["blocks.conv2.synapse.weight"])
    assert torch.equal(state["blocks.conv2.neuron.norm.running_mean"], 4 * old["blocks.conv2.neuron.norm.running_mean"])
    assert torch.equal(state["blocks.conv1.synapse.weight"], old["blocks.conv1.synapse.weight"])
    net = build_model(cfg)
    net.load_state_dict(state)
    net.eval()
    assert net.blocks["conv2"].neuron.threshold == 4 * base.blocks["conv2"].neuron.threshold
    # the same function up to the decays' rounding: nearly the same output spikes
    x = torch.from_numpy(synth_images[0][:8])
    with torch.no_grad():
        a, b = base(base.encode(x)).class_counts, net(net.encode(x)).class_counts
    assert a.sum() > 0 and (a - b).abs().sum() <= 0.2 * a.sum()
    # a ratio that leaves the 8-bit grid (weights trained at gain 4, back to gain 1), or its range, is refused
    thresholds = {k: float(v.neuron.threshold) for k, v in net.blocks.items() if hasattr(v, "neuron")}
    trained = dict(state)
    trained["blocks.conv2.synapse.weight"] = state["blocks.conv2.synapse.weight"].clone()
    trained["blocks.conv2.synapse.weight"].view(-1)[0] += 2 / fx.WEIGHT_SCALE  # one grid step
    assert rescale_to_gains(state, thresholds, dataclasses.replace(cfg, threshold_gains=()))["blocks.conv2.synapse.weight"].equal(
        old["blocks.conv2.synapse.weight"])
    with pytest.raises(AllnetError, match="conv2.*off the"):
        rescale_to_gains(trained, thresholds, dataclasses.replace(cfg, threshold_gains=()))
    with pytest.raises(AllnetError, match="out of"):
        rescale_to_gains(old, {k: float(v.neuron.threshold) for k, v in base.blocks.items() if hasattr(v, "neuron")},
                         dataclasses.replace(cfg, threshold_gains=(1, 200, 1, 1)))  # weights x200 leave 8 bits


def test_threshold_gains_are_checked(tiny_data, tmp_path):
    from lava_allnet.config import ModelConfig

    assert ModelConfig().gains() == (1,) * 6
    cfg = ModelConfig(threshold_gains=(1, 8, 8, 1, 1, 1))
    assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ValueError, match="needs 6 values"):
        ModelConfig(threshold_gains=(1, 8))
    with pytest.raises(ValueError, match="positive integers"):
        ModelConfig(threshold_gains=(1, 0, 1, 1, 1, 1))
    with pytest.raises(ValueError, match="conv1: threshold 5120 is outside"):  # 80 x 64: a 19-bit mantissa
        ModelConfig(threshold_gains=(64, 1, 1, 1, 1, 1))


def test_saved_split_errors_are_clear(tiny_data, tmp_path):
    bad = tmp_path / "other-classes.json"
    bad.write_text(json.dumps({"class_names": ["ALL", "HEM"], "train": ["ALL/a.png"], "val": ["HEM/b.png"]}))
    r = _train(tmp_path / "x", tiny_data, f"data.split={bad}")
    assert r.returncode == 2 and "do not match the data's" in r.stderr
    from lava_allnet.data import images as di

    ds = di.scan_image_folder(tiny_data)
    no_val = tmp_path / "no-val.json"
    no_val.write_text(json.dumps({"class_names": list(ds.class_names), "train": ds.relative()}))
    r = _train(tmp_path / "y", tiny_data, f"data.split={no_val}")
    assert r.returncode == 2 and "no val images" in r.stderr
    r = _train(tmp_path / "z", tiny_data, f"schedule.init={bad}")
    assert r.returncode == 2 and "cannot start from this checkpoint" in r.stderr


def test_rate_loss_charges_only_the_named_layers():
    """[losses.rate] layers: the SparsityEnforcer term covers those layers alone (here conv1, which
    fires above max_rate, and fc, which the full set also charges); unknown names are refused."""
    from types import SimpleNamespace

    from lava_allnet._lava import slayer
    from lava_allnet.config import get_model_config
    from lava_allnet.model import build_model
    from training.config import TrainConfig
    from training.features import RateLoss

    torch.manual_seed(0)
    net = build_model(get_model_config("neurallnet-tiny", input_size=32, time_steps=4))
    x = torch.rand(2, 3, 32, 32)

    def term(layers):
        cfg = TrainConfig(rate_weight=1.0, rate_max=0.0, rate_layers=layers)
        t = SimpleNamespace(net=net, cfg=cfg, state={"partial": {}})
        f = RateLoss(t)
        f.setup()
        out = net(net.encode((255 * x).to(torch.uint8)), **f.forward_kwargs())
        batch = SimpleNamespace(labels=torch.zeros(2))
        return f.layers, float(f.loss(torch.tensor(0.0), batch, out, None).detach()), out

    layers, only, out = term(("conv1",))
    assert layers == ("conv1",)
    expected = slayer().loss.SparsityEnforcer(max_rate=0.0, lam=1.0)
    expected.append(out.activations["conv1"])
    assert only == pytest.approx(float(expected.loss.detach())) and only > 0
    every, total, _ = term(())
    assert set(every) == {"conv1", "conv2", "conv3", "conv4", "fc"} and total > only
    with pytest.raises(ValueError, match="losses.rate.layers: conv9 not conv or dense layers"):
        term(("conv9",))
