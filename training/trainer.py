"""SLAYER training of one NeurALLNet stage: data, setup, one epoch, validation, checkpoints, resume.

A recipe (``training/recipe.py``) runs one or more stages, each in its own run directory:
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

import contextlib
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

from lava_allnet import fixed_point as fx
from lava_allnet.config import ModelConfig
from lava_allnet.frontend import FrontEnd
from lava_allnet.data import images as di
from lava_allnet.graded import GradedNetwork
from lava_allnet.errors import AllnetError, DataError
from lava_allnet.model import Network, build_model, synced_batch_norm
from training import augment, distributed, features
from training.checkpoint import load_torch, save_json, save_torch
from training.config import TrainConfig
from training.features import is_learned_bias

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
        from lava_allnet.kernels import fast_cuba
    except ImportError:
        return False
    fast_cuba.install()
    fast_cuba.tune_malloc()  # keep big freed tensors mapped: measured up to +25% speed
    return fast_cuba.available()


def fit_to_data(model_cfg: ModelConfig, data: TrainData, console) -> ModelConfig:
    """The model config for the data a run trains on: its class names, and the input front end's
    reference statistics fitted on the training images (a resumed run's config keeps its own)."""
    if tuple(model_cfg.class_names) != data.class_names:
        model_cfg = dataclasses.replace(model_cfg, class_names=data.class_names, num_classes=len(data.class_names))
    frontend = FrontEnd.from_json(model_cfg.frontend)
    if frontend.name != "none" and not frontend.reference:
        frontend.fit(data.images[torch.from_numpy(data.split["train"])].numpy())
        model_cfg = dataclasses.replace(model_cfg, frontend=frontend.to_json())
        console.print(f"input front end {frontend.name}: reference {frontend.reference}")
    return model_cfg


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
        if spec.graded:
            raise AllnetError(f"{path}: a graded model; a spiking stage cannot start from it")
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
    if ck.get("graded"):
        raise AllnetError(f"{path}: a graded stage's checkpoint; a spiking stage cannot start from it")
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


def class_logits(counts: torch.Tensor, net: Network, loss_scale: float) -> torch.Tensor:
    """Output spike rate per class, scaled: the cross-entropy logits."""
    return loss_scale * counts / (net.population * net.time_steps)


@torch.no_grad()
def adam_step_share(opt: torch.optim.Adam, net: Network) -> dict[str, float]:
    """Per weight layer ("conv1.weight", "conv1.bias" for a learned bias, ...), the median share
    of Adam's nominal step (the learning rate) its parameters take: sqrt(v) / (sqrt(v) + eps),
    v the bias-corrected second moment. Near 0, the gradients sit below eps and the layer barely
    trains (what ``schedule.adam_eps`` and ``biases.adam_eps`` are for)."""
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


@torch.no_grad()
def validate(net: Network, images: torch.Tensor, labels: torch.Tensor, loss_scale: float, batch: int = 32,
             device: torch.device | None = None) -> dict:
    """Accuracy, mean cross-entropy and predictions of ``net`` (eval mode) on these images."""
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


@dataclass
class Batch:
    """One training step's input: augmented uint8 images and labels, on the training device."""

    images: torch.Tensor
    labels: torch.Tensor


class Trainer:
    """One training stage in a run directory: :meth:`setup`, then :meth:`train_one_epoch` and
    :meth:`validate` per epoch (:meth:`fit` runs them), with the features the config turns on
    (``training/features.py``) hooked in."""

    def __init__(self, run_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, data: TrainData,
                 device: torch.device, console, resuming: bool, fast: bool, show_progress: bool = True) -> None:
        self.run_dir, self.model_cfg, self.cfg, self.data = run_dir, model_cfg, cfg, data
        self.device, self.console, self.resuming, self.fast = device, console, resuming, fast
        self.show_progress = show_progress and distributed.is_main()
        self.dist = distributed.get()  # None in a single process
        self.ddp: torch.nn.Module | None = None
        self._teacher = None  # the ANN teacher, once loaded or trained (teacher())
        self.gen = _gen
        self.train_idx = torch.from_numpy(data.split["train"])
        self.val_idx = torch.from_numpy(data.split.get("val", data.split["train"]))
        # fixed training images for the batch-norm statistics (seeded, so resume repeats them)
        self.norm_idx = self.train_idx[torch.randperm(len(self.train_idx), generator=_gen(cfg.seed, 7))[:128]]
        self.ckpt_path = run_dir / "checkpoint.pt"
        # what every batch gets after the flips: photometric augmentation, then the input front end
        # (validation, batch-norm statistics and the rate calibration see the front end only)
        self.frontend = FrontEnd.from_json(model_cfg.frontend)
        self.photometric = cfg.photometric()
        self.prepares = self.photometric.active or not self.frontend.identity
        self.images = self.frontend.apply_torch(data.images)
        self.state: dict[str, Any] = {"epoch": 0, "batch": 0, "history": [], "best": None,
                                      "partial": {"loss": 0.0, "correct": 0, "seen": 0}}

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """The training images' order in ``epoch`` (seeded: a resumed run repeats it)."""
        return self.train_idx[torch.randperm(len(self.train_idx), generator=_gen(self.cfg.seed, epoch))]

    def batch_images(self, idx: torch.Tensor, epoch: int, b: int) -> torch.Tensor:
        """Batch ``b`` of ``epoch``: the images ``idx`` flipped and rotated, then :meth:`prepare`d, with
        the batch's own seeded generator."""
        x = self.data.images[idx]
        gen = _gen(self.cfg.seed, epoch, b)
        if self.cfg.augment:
            x = augment.augment_batch(x, gen, strength=self.cfg.color_jitter)
        return self.prepare(x, gen) if self.prepares else x

    def prepare(self, images: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """uint8 images after the flips → photometric augmentation (with ``gen``) → front end."""
        if gen is not None and self.photometric.active:
            images = self.photometric(images, gen)
        return self.frontend.apply_torch(images)

    @property
    def epoch(self) -> int:
        return self.state["epoch"]

    @property
    def batches_per_epoch(self) -> int:
        return (len(self.train_idx) + self.cfg.batch_size - 1) // self.cfg.batch_size

    def setup(self) -> None:
        """The network (fresh, from ``init_from``, or from the checkpoint), features, optimiser, schedule."""
        cfg, dev = self.cfg, self.device
        torch.manual_seed(cfg.seed)
        self.net = build_model(self.model_cfg).to(dev)
        if cfg.init_from and not self.resuming:
            try:
                self.net.load_state_dict(initial_weights(Path(cfg.init_from), self.model_cfg, self.console))
            except AllnetError:
                raise
            except Exception as exc:
                raise AllnetError(f"{cfg.init_from}: cannot start from this checkpoint ({type(exc).__name__}: {exc})") from exc
            self.console.print(f"starting from {cfg.init_from}")
        elif not self.resuming:
            if cfg.init_teacher:
                from training.distill import student_from_teacher

                student_from_teacher(self.net, self.teacher())
                self.console.print("starting from the ANN teacher's features")
            train_np = self.data.split["train"]
            pick = torch.from_numpy(train_np[torch.randperm(len(train_np), generator=_gen(cfg.seed, 99))[:32].numpy()])
            rates = self.net.calibrate(self.net.encode(self.images[pick].to(dev)))
            self.console.print("initial spike rates: " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()))
        self.features = [f(self) for f in features.FEATURES if f.enabled(cfg)]
        for f in self.features:
            f.setup()
        groups: list[dict[str, Any]] = [{"params": list(self.net.parameters()), "lr": cfg.lr}]
        for f in self.features:
            groups = f.param_groups(groups)
        self.opt = torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=[g["lr"] for g in groups], total_steps=max(1, cfg.epochs * self.batches_per_epoch),
            pct_start=0.15)
        self.forward_kwargs: dict[str, Any] = {}
        for f in self.features:
            self.forward_kwargs.update(f.forward_kwargs())
        if self.resuming and self.ckpt_path.exists():
            ck = load_torch(self.ckpt_path)
            self.net.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
            self.state = ck["state"]
            self.load_features(ck)
            self.console.print(f"resuming at epoch {self.state['epoch'] + 1}, batch {self.state['batch']}")
        if self.dist is not None:
            # gradients averaged over the ranks in buckets as backward runs; the batch-norm means are
            # synchronised in the forward pass itself (synced_batch_norm), so no buffer broadcast
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(self.net, device_ids=[dev.index] if dev.type == "cuda" else None,
                                               forward_sync_buffers=False)
            self.console.print(f"data-parallel: {self.dist.world} ranks ({self.dist.backend}), "
                               f"global batch {cfg.batch_size}")

    def teacher(self):
        """The run's ANN teacher (distillation, ``schedule.init = "teacher"``): ``teacher.pt`` if the run
        has one, else trained once on this split, the same augmented batches as the student, and saved."""
        if self._teacher is not None:
            return self._teacher
        from training import distill

        cfg = self.cfg
        path = self.run_dir / (cfg.teacher_path or "teacher.pt")
        with distributed.main_first():  # rank 0 trains the teacher; the other ranks load it
            if path.exists():
                self._teacher = distill.load_teacher(path, self.model_cfg).to(self.device)
                return self._teacher
            seed = cfg.seed if cfg.teacher_seed is None else cfg.teacher_seed
            self.console.print(f"training the ANN distillation teacher ({cfg.teacher_epochs} epochs, seed {seed})")
            self._teacher, metrics = distill.train_teacher(
                self.model_cfg, self.data.images, self.data.labels, self.train_idx, self.val_idx, cfg.teacher_epochs,
                seed, self.gen, batch_size=cfg.batch_size, augment_strength=cfg.color_jitter if cfg.augment else None,
                log=self.console.print, device=self.device, prepare=self.prepare if self.prepares else None,
                consistency=cfg.teacher_consistency, cells=cfg.teacher_cells)
            self.console.print(f"teacher: train acc {metrics['train_accuracy']:.4f}, val acc "
                               f"{metrics['val_accuracy']:.4f} ({metrics['seconds']:.0f} s)")
            path.parent.mkdir(parents=True, exist_ok=True)
            distill.save_teacher(self._teacher, self.model_cfg, metrics, path)
        return self._teacher

    def load_features(self, ck: dict[str, Any]) -> None:
        """The features' state from a checkpoint (``checkpoint()`` wrote it under ``features``)."""
        saved = ck.get("features") or {}
        for f in self.features:
            state = f.state_dict()
            if state is not None:
                f.load_state_dict(saved.get(f.section, ck.get("average") if f.section == "averaging" else None))

    def keeps(self, row: dict[str, Any]) -> bool:
        """Whether an epoch's row becomes the kept model: it beats the kept one, and with averaging it
        is a running mean (the epochs before it are validated for the log only)."""
        eligible = not features.WeightAveraging.enabled(self.cfg) or row["averaged_epochs"] > 0
        return eligible and better(row, self.state["best"])

    def checkpoint(self) -> None:
        if not distributed.is_main():
            return
        save_torch({"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(), "state": self.state,
                    "features": {f.section: f.state_dict() for f in self.features}}, self.ckpt_path)

    def train_one_epoch(self, update=None, stop_after_batches: int | None = None) -> bool:
        """The rest of the current epoch (from ``state['batch']``); checkpoints every
        ``CHECKPOINT_EVERY_S``. Returns True when stopped early by ``stop_after_batches`` (tests)."""
        cfg, dev, net, state = self.cfg, self.device, self.net, self.state
        epoch, bs = state["epoch"], cfg.batch_size
        perm = self.epoch_order(epoch)
        net.train()
        self.t_epoch = time.perf_counter()
        seen_this_run = 0
        part = state["partial"]
        last_ckpt = time.monotonic()
        for b in range(state["batch"], self.batches_per_epoch):
            idx = perm[b * bs : (b + 1) * bs]
            x = self.batch_images(idx, epoch, b)
            y, share = self.data.labels[idx], 1.0
            if self.dist is not None:
                # the global batch, augmented as one process would, and this rank's slice of it
                x, y, share = self._slice(x, y)
            batch = Batch(x.to(dev, non_blocking=True), y.to(dev, non_blocking=True))
            before = dict(part)
            self._step(batch, share)
            if self.dist is not None:
                # the epoch's running sums (loss, correct, seen, the features') over every rank's slice
                delta = [(part[k] - before.get(k, 0)) * self.dist.weight for k in part]
                for k, total in zip(list(part), distributed.all_sum(delta)):
                    part[k] = before.get(k, 0) + (int(round(total)) if isinstance(part[k], int) else total)
            seen_this_run += len(idx)
            state["batch"] = b + 1
            self.batches_done += 1
            if update is not None:
                rate = seen_this_run / max(1e-9, time.perf_counter() - self.t_epoch)
                update(b + 1, f"loss {part['loss'] / part['seen']:.3f}  acc {part['correct'] / part['seen']:.3f}  "
                              f"{rate:.1f} img/s")
            if stop_after_batches is not None and self.batches_done >= stop_after_batches:
                self.checkpoint()
                return True
            if time.monotonic() - last_ckpt > CHECKPOINT_EVERY_S:
                self.checkpoint()
                last_ckpt = time.monotonic()
        return False

    def _slice(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This rank's slice ``[rank::world]`` of a global batch, and the factor on its mean loss that
        makes DDP's average of the ranks' gradients the global batch's mean. A rank left without
        images by a short last batch runs its first image with weight 0 (DDP needs every rank)."""
        ctx = self.dist
        n = len(y)
        xs, ys = x[ctx.rank :: ctx.world], y[ctx.rank :: ctx.world]
        ctx.weight = 1.0 if len(ys) else 0.0
        if not len(ys):
            return x[:1], y[:1], 0.0
        return xs, ys, len(ys) * ctx.world / n

    def _step(self, batch: Batch, share: float) -> None:
        """Forward, losses, backward and the optimiser step on one batch (a rank's slice of it: its
        loss times ``share``); adds to the epoch's running sums."""
        cfg, net, part = self.cfg, self.net, self.state["partial"]
        model = self.ddp if self.ddp is not None else net
        sync = (synced_batch_norm(self.dist.reduce_sum) if self.dist is not None
                else contextlib.nullcontext())
        with sync:
            out = model(net.encode(batch.images), **self.forward_kwargs)
        logits = class_logits(out.class_counts, net, cfg.loss_scale)
        loss = F.cross_entropy(logits, batch.labels)
        for f in self.features:
            loss = f.loss(loss, batch, out, logits)
        self.opt.zero_grad(set_to_none=True)
        (loss * share if share != 1.0 else loss).backward()
        self.opt.step()
        self.sched.step()
        n = len(batch.labels)
        part["loss"] += loss.item() * n
        part["correct"] += int((out.predictions() == batch.labels).sum())
        part["seen"] += n

    def validate(self, model: Network) -> dict:
        idx = self.val_idx
        if self.dist is None:
            return validate(model, self.images[idx], self.data.labels[idx], self.cfg.loss_scale, device=self.device)
        # each rank validates its share of the images; the sums make the whole set's figures
        mine = idx[self.dist.rank :: self.dist.world]
        v = validate(model, self.images[mine], self.data.labels[mine], self.cfg.loss_scale, device=self.device)
        correct, loss_sum = distributed.all_sum([v["accuracy"] * len(mine), v["loss"] * len(mine)])
        n = max(1, len(idx))
        return {"accuracy": round(correct) / n, "loss": loss_sum / n}

    def end_epoch(self) -> dict[str, Any]:
        """Validate the epoch's model (features choose it), record the row, keep the best, checkpoint."""
        state, part = self.state, self.state["partial"]
        epoch = state["epoch"]
        kept = self.net
        for f in reversed(self.features):
            kept = f.epoch_end(kept)
        val = self.validate(kept)
        row = {
            "epoch": epoch + 1,
            "train_loss": part["loss"] / max(1, part["seen"]),
            "train_accuracy": part["correct"] / max(1, part["seen"]),
            "val_loss": val["loss"],
            "val_accuracy": val["accuracy"],
            "lr": self.sched.get_last_lr()[0],
            "seconds": time.perf_counter() - self.t_epoch,
            "averaged_epochs": 0,
            "adam_step_share": adam_step_share(self.opt, self.net),
        }
        for f in self.features:
            row.update(f.row())
        state["history"].append(row)
        if self.keeps(row):
            state["best"] = row
            if distributed.is_main():
                save_torch({"model": kept.state_dict(), "config": self.model_cfg.to_dict(), "epoch": epoch + 1},
                           self.run_dir / "best.pt")
        state["epoch"] = epoch + 1
        state["batch"] = 0
        state["partial"] = {"loss": 0.0, "correct": 0, "seen": 0}
        self.checkpoint()
        if distributed.is_main():
            save_json(self.metrics(), self.run_dir / "metrics.json")
        return row

    def metrics(self) -> dict[str, Any]:
        return _metrics(self.state, self.model_cfg, self.net, self.fast, self.data, self.device)

    def fit(self, stop_after_batches: int | None = None) -> dict[str, Any]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        cfg, console = self.cfg, self.console
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[info]}"), TimeRemainingColumn()]
        self.batches_done = 0
        with Progress(*columns, console=console, disable=not self.show_progress) as prog:
            while self.state["epoch"] < cfg.epochs:
                task = prog.add_task(f"epoch {self.epoch + 1}/{cfg.epochs}", total=self.batches_per_epoch,
                                     completed=self.state["batch"], info="")
                if self.train_one_epoch(lambda done, info: prog.update(task, completed=done, info=info),
                                        stop_after_batches):
                    return {"stopped": True, **self.state}
                row = self.end_epoch()
                prog.update(task, info=f"loss {row['train_loss']:.3f}  acc {row['train_accuracy']:.3f}  "
                                       f"val acc {row['val_accuracy']:.3f}")
                if not console.is_terminal or not self.show_progress:  # logs get one line per epoch
                    console.print(f"epoch {row['epoch']}/{cfg.epochs}: loss {row['train_loss']:.4f} "
                                  f"acc {row['train_accuracy']:.4f} val loss {row['val_loss']:.4f} "
                                  f"val acc {row['val_accuracy']:.4f} ({row['seconds']:.0f} s)")
        return self.metrics()


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
    """Train (or resume) one stage into ``run_dir``; returns the metrics dict.

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
        try:
            train_cfg = TrainConfig.from_dict(saved["train"])
        except ValueError as exc:
            raise AllnetError(f"{run_dir / 'config.json'}: {exc}") from exc
        data_dir = saved["data"]["root"] if not saved["data"]["synthetic"] else None
        synth_per_class = saved["data"].get("per_class", synth_per_class)
    else:
        model_cfg = model_cfg or ModelConfig()
        train_cfg = train_cfg or TrainConfig()
        if (run_dir / "checkpoint.pt").exists():
            raise AllnetError(f"{run_dir}: already holds a training run (use --resume, or another --out)")
    distributed.barrier()  # every rank has read the run directory before rank 0 writes to it
    if device is not None and device != train_cfg.device:
        train_cfg = dataclasses.replace(train_cfg, device=device)
        if resume and distributed.is_main():
            # the run now lives on this device: a later plain resume continues here
            saved["train"]["device"] = device
            save_json(saved, run_dir / "config.json")
    dev = resolve_device(distributed.device_for(train_cfg.device))
    run_dir.mkdir(parents=True, exist_ok=True)
    if train_cfg.threads:
        torch.set_num_threads(distributed.threads_for(train_cfg.threads))
    # the C++ kernels are CPU-only; elsewhere SLAYER's torch code runs (lava_allnet/kernels/fast_cuba)
    fast = dev.type == "cpu" and enable_fast_cpu()

    with distributed.main_first():  # rank 0 writes the split (and generates smears); the others read them
        data = prepare_data(run_dir, Path(data_dir) if data_dir else None, model_cfg, train_cfg, synth_per_class,
                            console)
    model_cfg = fit_to_data(model_cfg, data, console)
    if not resume and distributed.is_main():
        save_json(
            {
                "model": model_cfg.to_dict(),
                "train": train_cfg.to_dict(),
                "data": {"root": str(data.root.resolve()), "synthetic": data_dir is None, "per_class": synth_per_class},
            },
            run_dir / "config.json",
        )
        save_json(list(data.class_names), run_dir / "classes.json")
    if train_cfg.family == "graded":
        from training.graded import GradedTrainer

        if distributed.get() is not None:
            from training.graded import ONE_PROCESS

            raise AllnetError(ONE_PROCESS)

        trainer: Trainer = GradedTrainer(run_dir, model_cfg, train_cfg, data, dev, console, resume, fast, show_progress)
    else:
        trainer = Trainer(run_dir, model_cfg, train_cfg, data, dev, console, resume, fast, show_progress)
    trainer.setup()
    return trainer.fit(stop_after_batches)


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


def better(row: dict[str, Any], best: dict[str, Any] | None) -> bool:
    """Whether an epoch's row beats the kept one: higher validation accuracy, then lower validation loss."""
    return best is None or (row["val_accuracy"], -row["val_loss"]) > (best["val_accuracy"], -best["val_loss"])


def read_best(run_dir: str | Path) -> tuple[dict, ModelConfig]:
    """A run directory's best.pt and its model config, with one-line errors."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AllnetError(f"{run_dir}: no such run directory")
    if not (run_dir / "best.pt").exists():
        from training.recipe import last_stage_dir

        run_dir = last_stage_dir(run_dir) or run_dir  # a recipe run: its last stage with a best.pt
    best = run_dir / "best.pt"
    if not best.exists():
        raise AllnetError(f"{run_dir}: no best.pt (has training finished an epoch?)")
    try:
        ck = load_torch(best)
        return ck, ModelConfig.from_dict(ck["config"])
    except Exception as exc:
        raise AllnetError(f"{best}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc


def load_trained(run_dir: str | Path) -> Network | GradedNetwork:
    """The best model of a run directory (for export): a spiking Network, or a graded stage's
    integer network."""
    ck, cfg = read_best(run_dir)
    try:
        if ck.get("graded"):
            from training.graded import load_best

            return load_best(ck, cfg)
        net = build_model(cfg)
        net.load_state_dict(ck["model"])
    except AllnetError:
        raise
    except Exception as exc:
        raise AllnetError(f"{Path(run_dir) / 'best.pt'}: cannot load checkpoint ({type(exc).__name__}: {exc})") from exc
    net.eval()
    return net
