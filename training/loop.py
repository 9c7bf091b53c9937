"""SLAYER training of NeurALLNet: data, loop, validation, checkpoints, resume.

Run directory:
    config.json   model + training config, data source
    classes.json  class names (index order)
    split.json    the stratified seeded split (relative paths), reused on resume
    checkpoint.pt latest state (model, optimiser, schedule, position) for --resume
    best.pt       best validation model (what `lava-allnet export` exports)
    metrics.json  per-epoch history and the best epoch

Every random choice (init, shuffle, augmentation) derives from the seed and
the (epoch, batch) position, so the same seed gives identical metrics on the
same machine and a resumed run continues exactly where it was killed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel

import lava_allnet  # noqa: F401
from lava_allnet import fixed_point as fx
from lava_allnet.config import ModelConfig, TrainConfig
from lava_allnet.data import images as di
from lava_allnet.errors import AllnetError, DataError
from lava_allnet.model import Network, build_model
from training import augment, distill
from training.checkpoint import load_torch, save_json, save_torch
from training.hint import Hint
from training.prefix_cache import PrefixCache, freeze, frozen_blocks

# mid-epoch checkpoint period (resume after a kill); the variable exists for tests
CHECKPOINT_EVERY_S = float(os.environ.get("LAVA_ALLNET_CHECKPOINT_EVERY_S", "30"))


@dataclass
class TrainData:
    images: torch.Tensor  # (N, 3, S, S) uint8
    labels: torch.Tensor  # (N,)
    split: dict[str, np.ndarray]
    class_names: tuple[str, ...]
    root: Path
    skipped: list[tuple[Path, str]]


def _console():
    from rich.console import Console

    return Console(stderr=True)


def resolve_device(name: str) -> torch.device:
    """The torch device to train on, or a clear error if this machine has none such."""
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise AllnetError(f"--device {name!r}: not a torch device (cpu, cuda, cuda:N)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise AllnetError(f"--device {name}: torch sees no CUDA GPU on this machine (torch {torch.__version__})")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise AllnetError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
        # Convolutions in TF32 would round the graded messages: keep float32 exact, as on CPU,
        # so the forward pass is the same integer arithmetic as the Lava fixed-point backend.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    elif dev.type != "cpu":
        raise AllnetError(f"--device {name}: training runs on cpu or cuda")
    return dev


def enable_fast_cpu() -> bool:
    """Use the fast CPU CUBA dynamics when available (identical results)."""
    try:
        from training import fast_cuba
    except ImportError:
        return False
    fast_cuba.install()
    fast_cuba.tune_malloc()  # keep big freed tensors mapped: measured up to +25% speed
    return fast_cuba.available()


def prepare_data(
    run_dir: Path,
    data_dir: Path | None,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    synth_per_class: int,
    console=None,
) -> TrainData:
    console = console or _console()
    if data_dir is None:
        from lava_allnet.data import synth

        data_dir = run_dir / "synthetic-data"
        if not data_dir.exists():
            console.print(f"generating synthetic smears: {synth_per_class} per class → {data_dir}")
            synth.generate_dataset(data_dir, synth_per_class, size=model_cfg.input_size, seed=train_cfg.seed)
    ds = di.scan_image_folder(data_dir, class_names=None)
    split_path = run_dir / "split.json"
    if split_path.exists():
        split = di.load_split(split_path, ds)
    elif train_cfg.split_from:
        split = _reuse_split(Path(train_cfg.split_from), ds)
        di.save_split(split_path, ds, split, train_cfg.seed)
    else:
        counts = np.bincount(ds.labels, minlength=len(ds.class_names))
        if counts.min() < 3:
            raise DataError(f"{data_dir}: every class needs at least 3 images for a split, found {counts.tolist()}")
        split = di.stratified_split(ds.labels, train_cfg.val_fraction, train_cfg.test_fraction, train_cfg.seed)
        di.save_split(split_path, ds, split, train_cfg.seed)
    from rich.progress import Progress

    with Progress(console=console, transient=True) as prog:
        task = prog.add_task("loading images", total=len(ds.paths))
        loaded = di.load_images(ds.paths, model_cfg.input_size, labels=list(ds.labels),
                                progress=lambda k: prog.update(task, completed=k))
    if loaded.skipped:
        console.print(f"[yellow]skipped {len(loaded.skipped)} unreadable image(s)[/], e.g. {loaded.skipped[0][1]}")
        keep = {p: i for i, p in enumerate(loaded.paths)}
        old_paths = ds.paths
        split = {k: np.asarray([keep[old_paths[i]] for i in v if old_paths[i] in keep], dtype=np.int64)
                 for k, v in split.items()}
    return TrainData(
        torch.from_numpy(loaded.images), torch.from_numpy(loaded.labels), split, ds.class_names, data_dir,
        loaded.skipped,
    )


def _reuse_split(path: Path, ds: di.Dataset) -> dict[str, np.ndarray]:
    """A saved split (e.g. a shipped model's), so a fine-tune validates and tests on the same images."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"--split {path}: cannot read a saved split ({exc})") from exc
    if list(doc.get("class_names", ds.class_names)) != list(ds.class_names):
        raise DataError(f"--split {path}: classes {doc['class_names']} do not match the data's {list(ds.class_names)}")
    missing = [k for k in ("train", "val") if not doc.get(k)]
    if missing:
        raise DataError(f"--split {path}: no {' or '.join(missing)} images in this split")
    return di.split_indices(doc, ds, path)


def initial_weights(path: Path, model_cfg: ModelConfig, console=None) -> dict[str, torch.Tensor]:
    """The state to fine-tune from: a run's best.pt, or an exported model (.net).

    An exported model holds the 8-bit weights and the batch-norm means as integer neuron biases;
    the float weights rebuilt from them quantise back to the same integers, so the network starts
    computing exactly what the file does (on the torch backend and on Lava). A layer whose
    threshold gain differs from the init model's (``ModelConfig.threshold_gains``) gets its
    weights and means multiplied by the ratio: the same function on a finer grid.
    """
    import h5py

    if path.is_file() and h5py.is_hdf5(path):
        from netx import format as nf
        from netx.export import network_from_spec

        spec = nf.read(path)
        if spec.model_config:
            # shapes are checked by load_state_dict; name the config fields that differ (e.g. T)
            ours, theirs = json.loads(json.dumps(model_cfg.to_dict())), spec.model_config  # tuples → lists
            diff = [k for k in sorted(theirs) if k not in ("class_names", "num_classes", "name") and ours.get(k) != theirs[k]]
            if diff and console is not None:
                console.print(f"[yellow]{path}: model config differs in {', '.join(f'{k} {theirs[k]} → {ours.get(k)}' for k in diff)}[/]")
        init = network_from_spec(spec)
        thresholds = {l.name: l.neuron.threshold for l in spec.layers if hasattr(l, "neuron")}
        return rescale_to_gains(init.state_dict(), thresholds, model_cfg, console)
    ck = load_torch(path)
    if "config" in ck:  # best.pt
        init_cfg = ModelConfig.from_dict(ck["config"])
    elif (path.parent / "config.json").is_file():  # a checkpoint.pt: its run's config
        init_cfg = ModelConfig.from_dict(json.loads((path.parent / "config.json").read_text())["model"])
    else:
        return ck["model"]
    return rescale_to_gains(ck["model"], init_cfg.layer_thresholds(), model_cfg, console)


def rescale_to_gains(state: dict[str, torch.Tensor], thresholds: dict[str, float], model_cfg: ModelConfig,
                     console=None) -> dict[str, torch.Tensor]:
    """``state`` (a network whose layers had ``thresholds``) for a network built from ``model_cfg``.

    A layer whose threshold is r times the init's gets weights and batch-norm means times r, so
    it computes the same function (decays round a little differently: states are r times
    larger). Weights must stay on the 8-bit grid and in range: anything else is an error.
    """
    out = dict(state)
    for name, thr in model_cfg.layer_thresholds().items():
        if name not in thresholds:
            raise AllnetError(f"layer {name}: not in the init model")
        r = thr / thresholds[name]
        if r == 1.0:
            continue
        key = f"blocks.{name}.synapse.weight"
        w = state[key] * r
        if not torch.equal(fx.quantize_weight(w.float()), w.float()):  # rounds to the grid, clamps to the range
            raise AllnetError(f"layer {name}: threshold {thresholds[name]:g} → {thr:g} (x{r:g}) moves its weights off the "
                              f"8-bit grid or out of [{fx.WEIGHT_MIN}, {fx.WEIGHT_MAX}]: use an integer gain ratio that fits")
        out[key] = w
        mkey = f"blocks.{name}.neuron.norm.running_mean"
        if mkey in state:
            m = state[mkey] * r
            moved = int((fx.quantize_norm_mean(m.float()) != m.float()).sum())
            if moved and console is not None:
                console.print(f"[yellow]layer {name}: {moved} bias(es) off the bias grid or range after x{r:g} (rounded, clamped)[/]")
            out[mkey] = m
        if console is not None:
            console.print(f"layer {name}: threshold {thresholds[name]:g} → {thr:g}, weights and means x{r:g}")
    return out


def is_learned_bias(name: str) -> bool:
    """A parameter name that is a neuron bias (a held batch-norm mean made trainable by learn_norm_means)."""
    return name.endswith("running_mean")


def param_groups(net: Network, model_cfg: ModelConfig, train_cfg: TrainConfig) -> list[dict[str, Any]]:
    """Adam's parameter groups: one at ``lr``, or with ``gain_lr`` each weight layer's synapse
    weights at ``lr`` x its threshold gain (the rest at ``lr``). With ``bias_adam_eps`` the
    learned biases form their own group at that epsilon; with ``freeze_weights`` they are the
    only group; with ``freeze_through`` the frozen prefix's parameters are in none."""
    gains = dict(zip(model_cfg.layer_thresholds(), model_cfg.gains())) if train_cfg.gain_lr else {}
    own_bias_group = train_cfg.bias_adam_eps is not None or train_cfg.freeze_weights
    by_key: dict[tuple[bool, int], list[torch.nn.Parameter]] = {}
    frozen = set(frozen_blocks(net, f"conv{train_cfg.freeze_through}")) if train_cfg.freeze_through else set()
    for name, p in net.named_parameters():
        bias = own_bias_group and is_learned_bias(name)
        parts = name.split(".")  # blocks.<layer>.synapse.weight
        if (train_cfg.freeze_weights and not bias) or (parts[0] == "blocks" and parts[1] in frozen):
            continue
        gain = gains.get(parts[1], 1) if name.endswith("synapse.weight") and parts[0] == "blocks" else 1
        by_key.setdefault((bias, gain), []).append(p)
    groups = []
    for (bias, gain), ps in sorted(by_key.items()):
        group: dict[str, Any] = {"params": ps, "lr": train_cfg.lr * gain}
        if bias and train_cfg.bias_adam_eps is not None:
            group["eps"] = train_cfg.bias_adam_eps
        groups.append(group)
    return groups


def class_logits(counts: torch.Tensor, net: Network, loss_scale: float) -> torch.Tensor:
    """Output spike rate per class, scaled: the cross-entropy logits."""
    return loss_scale * counts / (net.population * net.time_steps)


@torch.no_grad()
def refresh_norm_stats(net: Network, images: torch.Tensor, batch: int = 16, device: torch.device | None = None) -> None:
    """Recompute every mean-only batch norm's running mean with the current weights.

    The running mean (momentum 0.1) lags the weights while the learning rate is
    high, so a validation pass in eval mode disagreed with training (measured:
    validation accuracy jumping between 0.31 and 0.69 from epoch to epoch).
    A cumulative mean over a fixed set of training images, layer by layer as the
    forward pass goes, is what inference (and Loihi's bias) should use.
    """
    norms = _norms(net)
    if not norms:
        return
    was_training = net.training
    momenta = [n.momentum for n in norms]
    for n in norms:
        n.running_mean.zero_()
    net.train()
    for k, i in enumerate(range(0, len(images), batch)):
        for n in norms:
            n.momentum = 1.0 / (k + 1)  # cumulative average over the batches
        net(net.encode(images[i : i + batch].to(device)))
    for n, m in zip(norms, momenta):
        n.momentum = m
    net.train(was_training)


def _norms(net: Network, blocks: tuple[str, ...] | None = None) -> list:
    return [b.neuron.norm for name, b in net.blocks.items()
            if getattr(getattr(b, "neuron", None), "norm", None) is not None and (blocks is None or name in blocks)]


@torch.no_grad()
def calibrate_norm_means(net: Network, images: torch.Tensor, batch: int = 16, device: torch.device | None = None,
                         blocks: tuple[str, ...] | None = None) -> int:
    """Set every batch norm's mean to its inference value, layer by layer.

    :func:`refresh_norm_stats` runs the whole net in training mode, so each layer's mean is
    taken over inputs that earlier layers centred with their batch means, not with the
    biases inference uses. Here layer k's mean is taken with layers before it already at
    their new inference means (one pass over ``images`` per norm), so the result depends on
    the image set only, not on how the images are batched. ``blocks``: only these blocks' norms (the
    others keep their means, e.g. a new prefix under old layers). Returns the number of norms set.
    """
    norms = _norms(net, blocks)
    was_training = net.training
    net.eval()
    for n in norms:
        n.running_mean.zero_()
        momentum = n.momentum
        n.train()
        n.update = True
        for k, i in enumerate(range(0, len(images), batch)):
            n.momentum = len(images[i : i + batch]) / min(len(images), i + batch)  # exact mean over all images
            net(net.encode(images[i : i + batch].to(device)))
        n.eval()
        n.momentum = momentum
    net.train(was_training)
    return len(norms)


def fix_norm_means(net: Network, fixed: bool = True) -> None:
    """Training-mode forward passes subtract the stored means (``update`` off) instead of batch means."""
    for n in _norms(net):
        n.update = not fixed


@torch.no_grad()
def adam_step_share(opt: torch.optim.Adam, net: Network) -> dict[str, float]:
    """Per weight layer ("conv1.weight", "conv1.bias" for a learned bias, ...), the median share
    of Adam's nominal step (the learning rate) its parameters take: sqrt(v) / (sqrt(v) + eps),
    v the bias-corrected second moment. Near 0, the gradients sit below eps and the layer barely
    trains (what TrainConfig.adam_eps is for)."""
    names = {id(p): n for n, p in net.named_parameters()}
    share = {}
    for group in opt.param_groups:
        beta2, eps = group["betas"][1], group["eps"]
        for p in group["params"]:
            name, state = names.get(id(p), ""), opt.state.get(p)
            kind = "weight" if name.endswith("synapse.weight") else "bias" if is_learned_bias(name) else None
            if kind is None or not state:
                continue
            v = (state["exp_avg_sq"] / (1 - beta2 ** float(state["step"]))).sqrt()
            share[f"{name.split('.')[1]}.{kind}"] = round(float((v / (v + eps)).median()), 4)
    return share


def learn_norm_means(net: Network) -> int:
    """Make every held batch-norm mean a trainable parameter (the neuron bias, learned).

    The mean stays the module's ``running_mean`` (same state-dict key, same export); the
    forward subtracts it on the bias grid with a straight-through gradient. Call after
    :func:`fix_norm_means` (a batch-mean update would overwrite it). Returns the number of norms.
    """
    norms = _norms(net)
    for n in norms:
        if n.update:
            raise ValueError("learn_norm_means: the means must be held first (fix_norm_means)")
        mean = n.running_mean.detach().clone()
        del n._buffers["running_mean"]
        n.running_mean = torch.nn.Parameter(mean)
    return len(norms)


@torch.no_grad()
def evaluate(net: Network, images: torch.Tensor, labels: torch.Tensor, loss_scale: float, batch: int = 32,
             device: torch.device | None = None) -> dict:
    net.eval()
    correct, loss_sum, preds = 0, 0.0, []
    for i in range(0, len(images), batch):
        x = net.encode(images[i : i + batch].to(device))
        out = net(x)
        y = labels[i : i + batch].to(device)
        loss_sum += F.cross_entropy(class_logits(out.class_counts, net, loss_scale), y, reduction="sum").item()
        p = out.predictions()
        correct += int((p == y).sum())
        preds.append(p.cpu())
    n = max(1, len(images))
    return {"accuracy": correct / n, "loss": loss_sum / n, "predictions": torch.cat(preds) if preds else torch.empty(0)}


def _gen(*key: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))
    return g


def train(
    run_dir: str | Path,
    model_cfg: ModelConfig | None = None,
    train_cfg: TrainConfig | None = None,
    data_dir: str | Path | None = None,
    synth_per_class: int = 120,
    resume: bool = False,
    console=None,
    show_progress: bool = True,
    stop_after_batches: int | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Train (or resume) into ``run_dir``; returns the metrics dict.

    stop_after_batches: for tests, stop (as if killed) after that many batches.
    device: overrides ``train_cfg.device`` (e.g. resuming a GPU run on a CPU).
    """
    console = console or _console()
    run_dir = Path(run_dir)
    if resume:
        if not (run_dir / "config.json").exists():
            raise AllnetError(f"{run_dir}: nothing to resume (no config.json)")
        saved = json.loads((run_dir / "config.json").read_text())
        model_cfg = ModelConfig.from_dict(saved["model"])
        train_cfg = TrainConfig.from_dict(saved["train"])
        data_dir = saved["data"]["root"] if not saved["data"]["synthetic"] else None
        synth_per_class = saved["data"].get("per_class", synth_per_class)
    else:
        model_cfg = model_cfg or ModelConfig()
        train_cfg = train_cfg or TrainConfig()
        if (run_dir / "checkpoint.pt").exists():
            raise AllnetError(f"{run_dir}: already holds a training run (use --resume, or another --out)")
        if train_cfg.norm_means == "keep" and not train_cfg.init_from:
            raise AllnetError("--norm-means keep keeps the means of the --init model: give --init")
        if train_cfg.gain_lr and set(model_cfg.gains()) == {1}:
            raise AllnetError("--gain-lr scales each layer's learning rate by its --threshold-gains value: give gains above 1")
    if device is not None and device != train_cfg.device:
        train_cfg = dataclasses.replace(train_cfg, device=device)
        if resume:
            # the run now lives on this device: a later plain --resume continues here
            saved["train"]["device"] = device
            save_json(saved, run_dir / "config.json")
    dev = resolve_device(train_cfg.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    # the C++ kernels are CPU-only; elsewhere SLAYER's torch code runs (training/fast_cuba)
    fast = dev.type == "cpu" and enable_fast_cpu()

    data = prepare_data(run_dir, Path(data_dir) if data_dir else None, model_cfg, train_cfg, synth_per_class, console)
    if tuple(model_cfg.class_names) != data.class_names:
        model_cfg = dataclasses.replace(model_cfg, class_names=data.class_names, num_classes=len(data.class_names))
    if not resume:
        save_json(
            {
                "model": model_cfg.to_dict(),
                "train": train_cfg.to_dict(),
                "data": {"root": str(data.root.resolve()), "synthetic": data_dir is None, "per_class": synth_per_class},
            },
            run_dir / "config.json",
        )
        save_json(list(data.class_names), run_dir / "classes.json")

    torch.manual_seed(train_cfg.seed)
    net = build_model(model_cfg).to(dev)
    if train_cfg.init_from and not resume:
        try:
            net.load_state_dict(initial_weights(Path(train_cfg.init_from), model_cfg, console))
        except Exception as exc:
            raise AllnetError(f"{train_cfg.init_from}: cannot start from this checkpoint ({type(exc).__name__}: {exc})") from exc
        console.print(f"starting from {train_cfg.init_from}")
    elif not resume:
        train_np = data.split["train"]
        pick = torch.from_numpy(train_np[torch.randperm(len(train_np), generator=_gen(train_cfg.seed, 99))[:32].numpy()])
        rates = net.calibrate(net.encode(data.images[pick].to(dev)))
        console.print("initial spike rates: " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()))
    tr_idx = torch.from_numpy(data.split["train"])
    va_idx = torch.from_numpy(data.split.get("val", data.split["train"]))
    if train_cfg.holds_norm_means:
        # The biases Lava and Loihi use are fixed; training against per-batch means and re-estimating
        # them from 128 images each epoch moved validation accuracy by up to 4 points at fixed weights
        # (measured on the shipped model). Fix them once, from all training images, and let the weights adapt.
        # "keep" keeps the init model's means instead: recalibrated over a longer window (T 16 → 24)
        # they dropped the shipped weights from 0.956 to 0.398 validation accuracy before any update.
        if train_cfg.norm_means == "fixed" and not resume:
            console.print(f"fixing the batch-norm means over {len(tr_idx)} training images")
            calibrate_norm_means(net, data.images[tr_idx], device=dev)
        elif not resume:
            console.print(f"keeping the batch-norm means of {train_cfg.init_from}")
        fix_norm_means(net)
        if train_cfg.learn_biases:
            # Trained rather than estimated: the loss, not a mean over some images, sets each
            # bias (on its Lava grid, straight-through), as it sets the weights.
            learn_norm_means(net)
            if train_cfg.freeze_weights:
                # bias-only training: no weight gradients either (the conv backward skips them)
                for name, p in net.named_parameters():
                    p.requires_grad_(is_learned_bias(name))
    prefix, cache, cache_row = None, None, None
    if train_cfg.freeze_through:
        prefix = f"conv{train_cfg.freeze_through}"
        try:
            frozen = freeze(net, prefix)
        except ValueError as exc:
            raise AllnetError(f"--freeze-through {train_cfg.freeze_through}: {exc}") from exc
    hint = None
    if train_cfg.hint_weight > 0:
        try:
            hint = Hint(model_cfg, train_cfg.hint_layers).to(dev)
        except ValueError as exc:
            raise AllnetError(f"--hint-layers: {exc}") from exc
    keep = hint.keep() if hint is not None else ()  # the stages the hint reads, on either path
    teacher = _teacher(run_dir, model_cfg, train_cfg, data, tr_idx, va_idx, console, dev) if train_cfg.uses_teacher else None
    bs = train_cfg.batch_size
    # fixed training images for the batch-norm statistics (seeded, so resume repeats them)
    norm_idx = tr_idx[torch.randperm(len(tr_idx), generator=_gen(train_cfg.seed, 7))[:128]]
    groups = param_groups(net, model_cfg, train_cfg)
    ckpt_path = run_dir / "checkpoint.pt"
    if hint is not None:
        if not (resume and ckpt_path.exists()):  # a resumed run loads its trained adapters below
            fit = hint.fit(net, teacher, data.images[norm_idx])
            console.print("hint adapters fitted on 128 training images, loss " + ", ".join(f"conv{k} {v:.3f}" for k, v in fit.items()))
        groups.append({"params": list(hint.parameters()), "lr": train_cfg.lr})
    opt = torch.optim.Adam(groups, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay, eps=train_cfg.adam_eps)
    batches_per_epoch = (len(tr_idx) + bs - 1) // bs
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=[g["lr"] for g in groups], total_steps=max(1, train_cfg.epochs * batches_per_epoch), pct_start=0.15
    )
    state = {"epoch": 0, "batch": 0, "history": [], "best": None, "partial": {"loss": 0.0, "correct": 0, "seen": 0}}
    # Weight averaging (Izmailov et al. 2018): validation accuracy of consecutive epochs swings
    # by +-1.5 points at a fixed recipe; the running mean of the late epoch-end weights is one
    # flatter model instead of a pick among noisy ones. Parameters only: the batch-norm means
    # are recomputed for the mean weights, and quantisation applies on use.
    average = AveragedModel(net) if train_cfg.average_from else None
    if resume and ckpt_path.exists():
        ck = load_torch(ckpt_path)
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        state = ck["state"]
        if average is not None and ck.get("average") is not None:
            average.load_state_dict(ck["average"])
        if hint is not None:
            if ck.get("hint") is None:
                raise AllnetError(f"{ckpt_path}: has no hint adapters to resume with")
            hint.load_state_dict(ck["hint"])
        console.print(f"resuming at epoch {state['epoch'] + 1}, batch {state['batch']}")
    if prefix is not None:  # from the weights training starts with (a resumed run's checkpoint)
        t0 = time.perf_counter()
        views = len(augment.VIEWS) if train_cfg.augment else 1
        cache = PrefixCache(net, prefix, data.images[tr_idx], views=views, device=dev)
        cache_row = torch.full((len(data.images),), -1, dtype=torch.long)
        cache_row[tr_idx] = torch.arange(len(tr_idx))
        console.print(f"conv1..{prefix} frozen ({frozen:,} parameters); their spikes for {len(tr_idx)} training "
                      f"images x {views} views cached: {cache.nbytes / 2**20:.0f} MiB, {time.perf_counter() - t0:.0f} s")

    def checkpoint() -> None:
        save_torch({"model": net.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                    "state": state,
                    "average": average.state_dict() if average is not None else None,
                    "hint": hint.state_dict() if hint is not None else None}, ckpt_path)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[info]}"), TimeRemainingColumn()]
    batches_done = 0
    last_ckpt = time.monotonic()
    with Progress(*columns, console=console, disable=not show_progress) as prog:
        while state["epoch"] < train_cfg.epochs:
            epoch = state["epoch"]
            task = prog.add_task(f"epoch {epoch + 1}/{train_cfg.epochs}", total=batches_per_epoch,
                                 completed=state["batch"], info="")
            perm = tr_idx[torch.randperm(len(tr_idx), generator=_gen(train_cfg.seed, epoch))]
            net.train()
            t_epoch = time.perf_counter()
            seen_this_run = 0
            part = state["partial"]
            for b in range(state["batch"], batches_per_epoch):
                idx = perm[b * bs : (b + 1) * bs]
                x = data.images[idx]
                if train_cfg.augment:
                    x = augment.augment_batch(x, _gen(train_cfg.seed, epoch, b), strength=train_cfg.color_jitter)
                x, y = x.to(dev, non_blocking=True), data.labels[idx].to(dev, non_blocking=True)
                if cache is not None:
                    # the same draw as augment_batch's above, as a cached view; the frozen layers'
                    # range penalty has no gradient, so only the trained layers' is added
                    views = (augment.view_indices(len(idx), _gen(train_cfg.seed, epoch, b)) if train_cfg.augment
                             else torch.zeros(len(idx), dtype=torch.long))
                    h = cache.get(cache_row[idx], views).to(dev, non_blocking=True)
                    out = net(h, range_penalty=train_cfg.range_weight > 0, start_after=prefix, keep=keep)
                else:
                    out = net(net.encode(x), range_penalty=train_cfg.range_weight > 0, keep=keep)
                logits = class_logits(out.class_counts, net, train_cfg.loss_scale)
                loss = F.cross_entropy(logits, y)
                if teacher is not None:
                    with torch.no_grad():
                        soft, feats = teacher.forward_features(x, hint.layers if hint else ())
                    a = train_cfg.distill_weight
                    if a > 0:
                        loss = (1 - a) * loss + a * distill.distillation_loss(logits, soft, train_cfg.distill_temperature)
                    if hint is not None:
                        h_loss = hint.loss(out.activations, net, feats)
                        part["hint"] = part.get("hint", 0.0) + h_loss.item() * len(idx)
                        loss = loss + train_cfg.hint_weight * h_loss
                # keep u and v inside Loihi's 24-bit registers, where Lava wraps/saturates and SLAYER does not
                loss = loss + train_cfg.range_weight * out.range_penalty
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                part["loss"] += loss.item() * len(idx)
                part["correct"] += int((out.predictions() == y).sum())
                part["seen"] += len(idx)
                seen_this_run += len(idx)
                state["batch"] = b + 1
                rate = seen_this_run / max(1e-9, time.perf_counter() - t_epoch)
                prog.update(task, completed=b + 1, info=(
                    f"loss {part['loss'] / part['seen']:.3f}  acc {part['correct'] / part['seen']:.3f}  {rate:.1f} img/s"))
                batches_done += 1
                if stop_after_batches is not None and batches_done >= stop_after_batches:
                    checkpoint()
                    return {"stopped": True, **state}
                if time.monotonic() - last_ckpt > CHECKPOINT_EVERY_S:
                    checkpoint()
                    last_ckpt = time.monotonic()
            kept = net  # the model this epoch validates and may save as best.pt
            if average is not None and epoch + 1 >= train_cfg.average_from:
                average.update_parameters(net)
                kept = average.module
            if not train_cfg.holds_norm_means:
                # only the validated model's running means: training mode reads batch means, never these
                refresh_norm_stats(kept, data.images[norm_idx], device=dev)
            val = evaluate(kept, data.images[va_idx], data.labels[va_idx], train_cfg.loss_scale, device=dev)
            row = {
                "epoch": epoch + 1,
                "train_loss": part["loss"] / max(1, part["seen"]),
                "train_accuracy": part["correct"] / max(1, part["seen"]),
                "val_loss": val["loss"],
                "val_accuracy": val["accuracy"],
                "lr": sched.get_last_lr()[0],
                "seconds": time.perf_counter() - t_epoch,
                "averaged_epochs": int(average.n_averaged) if kept is not net else 0,
                "adam_step_share": adam_step_share(opt, net),
            }
            if hint is not None:
                row["hint_loss"] = part.get("hint", 0.0) / max(1, part["seen"])
            state["history"].append(row)
            prog.update(task, info=f"loss {row['train_loss']:.3f}  acc {row['train_accuracy']:.3f}  "
                                   f"val acc {row['val_accuracy']:.3f}")
            if not console.is_terminal or not show_progress:  # logs get one line per epoch
                console.print(f"epoch {row['epoch']}/{train_cfg.epochs}: loss {row['train_loss']:.4f} "
                              f"acc {row['train_accuracy']:.4f} val loss {row['val_loss']:.4f} "
                              f"val acc {row['val_accuracy']:.4f} ({row['seconds']:.0f} s)")
            best = state["best"]
            if best is None or (row["val_accuracy"], -row["val_loss"]) > (best["val_accuracy"], -best["val_loss"]):
                state["best"] = row
                save_torch({"model": kept.state_dict(), "config": model_cfg.to_dict(), "epoch": epoch + 1}, run_dir / "best.pt")
            state["epoch"] = epoch + 1
            state["batch"] = 0
            state["partial"] = {"loss": 0.0, "correct": 0, "seen": 0}
            checkpoint()
            last_ckpt = time.monotonic()
            save_json(_metrics(state, model_cfg, net, fast, data, dev), run_dir / "metrics.json")
    return _metrics(state, model_cfg, net, fast, data, dev)


def _teacher(run_dir: Path, model_cfg: ModelConfig, train_cfg: TrainConfig, data: TrainData,
             tr_idx: torch.Tensor, va_idx: torch.Tensor, console, device: torch.device) -> "distill.Teacher":
    """The run's distillation teacher: trained once into teacher.pt, reloaded on resume."""
    path = run_dir / "teacher.pt"
    if path.exists():
        return distill.load_teacher(path, model_cfg).to(device)
    console.print(f"training the ANN distillation teacher ({train_cfg.teacher_epochs} epochs)")
    teacher, metrics = distill.train_teacher(
        model_cfg, data.images, data.labels, tr_idx, va_idx, train_cfg.teacher_epochs, train_cfg.seed, _gen,
        batch_size=train_cfg.batch_size, augment_strength=train_cfg.color_jitter if train_cfg.augment else None,
        log=console.print, device=device)
    console.print(f"teacher: train acc {metrics['train_accuracy']:.4f}, val acc {metrics['val_accuracy']:.4f} "
                  f"({metrics['seconds']:.0f} s)")
    distill.save_teacher(teacher, model_cfg, metrics, path)
    return teacher


def _metrics(state, model_cfg: ModelConfig, net: Network, fast: bool, data: TrainData,
             device: torch.device) -> dict[str, Any]:
    return {
        "history": state["history"],
        "best": state["best"],
        "epochs_done": state["epoch"],
        "parameters": net.num_parameters(),
        "model": model_cfg.name,
        "fast_cpu_dynamics": fast,
        "device": str(device),
        "split_sizes": {k: int(len(v)) for k, v in data.split.items()},
        "skipped_images": [str(p) for p, _ in data.skipped],
    }


def read_best(run_dir: str | Path) -> tuple[dict, ModelConfig]:
    """A run directory's best.pt and its model config, with one-line errors."""
    run_dir = Path(run_dir)
    best = run_dir / "best.pt"
    if not run_dir.is_dir():
        raise AllnetError(f"{run_dir}: no such run directory")
    if not best.exists():
        raise AllnetError(f"{run_dir}: no best.pt (has training finished an epoch?)")
    try:
        ck = load_torch(best)
        return ck, ModelConfig.from_dict(ck["config"])
    except Exception as exc:
        raise AllnetError(f"{best}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc


def load_trained(run_dir: str | Path) -> Network:
    """The best model of a run directory (for export)."""
    ck, cfg = read_best(run_dir)
    try:
        net = build_model(cfg)
        net.load_state_dict(ck["model"])
    except AllnetError:
        raise
    except Exception as exc:
        raise AllnetError(f"{Path(run_dir) / 'best.pt'}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc
    net.eval()
    return net
