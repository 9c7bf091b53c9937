"""NeurALLNet-G from the ANN teacher: a graded fine-tune, then the exact integer network.

The teacher (``training.distill.Teacher``: conv, batch norm, ReLU per layer, a linear read-out) is
fine-tuned through the graded quantiser: each layer's ReLU output rounded to its message step and
zeroed below its threshold, gradients passed straight through the rounding (not below the
threshold). The steps and thresholds are calibrated once on training images before the fine-tune
and then held: a layer's step is the 99.9th percentile of its activation over 255, its threshold
``threshold`` times its mean positive activation. The loss is the cross-entropy, or with
``losses.distill`` that mixed with the KL divergence to the frozen teacher's answers on the same
batch (``training.distill.mixed_loss``); ``losses.activations`` adds a term holding each hidden
layer's messages to the teacher's ReLU outputs on the batch (:func:`activation_loss`).

:func:`integer_network` then folds each batch norm into its conv, rounds the weights to 8 bits per
layer, and turns the steps into the integer network of ``lava_allnet.graded`` (a power-of-two
shift per layer, the bias and threshold in the accumulator's and the message's units).
"""
from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

from lava_allnet.config import ModelConfig
from lava_allnet.frontend import FrontEnd
from lava_allnet.graded import GradedLayer, GradedNetwork
from training import features
from training.checkpoint import load_torch, save_json, save_torch
from training.distill import Teacher, mixed_loss
from training.trainer import Trainer, _gen

LEVELS = 127  # weight levels a side: Loihi's 8-bit weights are even mantissas 2k, |k| <= 127
ONE_PROCESS = ("a graded stage trains in one process (its batch norm takes each batch's own statistics, which "
               "data-parallel ranks would split); run it without --nproc or torchrun")
Quant = list[tuple[float, float]]  # per hidden layer: (message step, threshold), in the teacher's units


def forward(teacher, x: torch.Tensor, quant: Quant | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and per-layer ReLU outputs of the teacher on front-end pixels x (N, C, H, W) uint8.
    With quant, each ReLU output is the graded message (straight-through rounding)."""
    h = (x.float() / 255).contiguous()
    acts, layer = [], 0
    for m in teacher.features:
        h = m(h)
        if isinstance(m, torch.nn.ReLU):
            if quant is not None:
                step, theta = quant[layer]
                q = torch.round(h / step) * step
                h = torch.where(h >= theta, h + (q - h).detach(), torch.zeros_like(h))
            acts.append(h)
            layer += 1
    return teacher.head(h.flatten(1)), acts


def activation_loss(student: list[torch.Tensor], teacher: list[torch.Tensor]) -> torch.Tensor:
    """Mean over hidden layers of |s - t|² / |t|² (summed over the batch): each layer's graded messages
    against the frozen teacher's ReLU outputs on the same images, every layer weighing alike whatever
    its scale. Gradients reach a message at or above its threshold (straight through the rounding)."""
    if len(student) != len(teacher) or not student:
        raise ValueError(f"{len(student)} student layers against {len(teacher)} teacher layers")
    return torch.stack([(s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12)
                        for s, t in zip(student, teacher)]).mean()


@torch.no_grad()
def calibrate(teacher, x: torch.Tensor, threshold: float) -> Quant:
    """Per hidden layer (step, threshold) from front-end images x (see the module doc)."""
    teacher.eval()
    out = []
    for a in forward(teacher, x)[1]:
        step = float(torch.quantile(a.flatten()[::7], 0.999)) / 255
        out.append((step, max(threshold * float(a[a > 0].mean()), step / 2)))
    return out


def _folded(teacher) -> list[tuple[torch.nn.Module, int, int]]:
    """(layer with weight and bias, stride, padding) per conv (batch norm folded in), then the head."""
    t = copy.deepcopy(teacher).eval().float()
    mods, out = list(t.features), []
    for i, m in enumerate(mods):
        if isinstance(m, torch.nn.Conv2d):
            bn = mods[i + 1] if i + 1 < len(mods) and isinstance(mods[i + 1], torch.nn.BatchNorm2d) else None
            out.append((fuse_conv_bn_eval(m, bn) if bn is not None else m, m.stride[0], m.padding[0]))
    out.append((t.head, 1, 0))
    return out


@torch.no_grad()
def integer_network(teacher, quant: Quant, class_names: tuple[str, ...], input_shape: tuple[int, int, int],
                    frontend: FrontEnd) -> GradedNetwork:
    """The exact integer network of a fine-tuned teacher and its held quantiser.

    Per layer k with input step s_in (the pixels': 1/255): weights 2 · round(W / w_step), Loihi's even
    8-bit mantissas (w_step = max|W| / 127); the accumulator's unit u = w_step / 2 · s_in; the shift the power of two
    nearest step_k / u (so the message step becomes u · 2**shift, within √2 of the calibrated one);
    the bias b / u rounded, plus half a message step (the floor of the shift then rounds to nearest);
    vth the calibrated threshold in message steps (at least 1). The read-out keeps shift 0: its
    class scores are its accumulators. (``GradedLayer`` refuses a bias outside the 24-bit state.)
    """
    folded = _folded(teacher)
    if len(folded) != len(quant) + 1:
        raise ValueError(f"{len(quant)} quantiser layers for {len(folded) - 1} conv layers")
    layers, s_in = [], 1.0 / 255
    for k, (mod, stride, padding) in enumerate(folded):
        w = mod.weight.double()
        w_step = float(w.abs().max()) / LEVELS
        w_int = 2 * torch.round(w / w_step).numpy().astype(np.int32)
        unit = w_step / 2 * s_in
        last = k == len(folded) - 1
        if last:
            shift, vth = 0, 0
        else:
            step, theta = quant[k]
            shift = max(0, int(round(math.log2(step / unit))))
            vth = max(1, int(round(theta / (unit * 2**shift))))
        bias = torch.round(mod.bias.double() / unit).numpy().astype(np.int64)
        if shift:
            bias = bias + (1 << (shift - 1))
        name = "fc" if last else f"conv{k + 1}"
        layers.append(GradedLayer(name, "dense" if last else "conv", w_int, bias, shift, vth, stride, padding))
        s_in = unit * 2**shift
    return GradedNetwork(layers, input_shape, class_names, frontend)


def integer_of(teacher, quant: Quant, cfg: ModelConfig) -> GradedNetwork:
    """:func:`integer_network` with the classes, input shape and front end of a model config (kept as
    ``config``, which the model file records)."""
    net = integer_network(teacher, [tuple(q) for q in quant], tuple(cfg.class_names),
                          (cfg.in_channels, cfg.input_size, cfg.input_size), FrontEnd.from_json(cfg.frontend))
    net.config = cfg
    return net


# ------------------------------------------------------------------ the recipe stage (model.family = "graded")

CALIBRATION_IMAGES = 256  # training images (front end only) that calibrate the message steps and thresholds


class GradedTrainer(Trainer):
    """A graded stage in a run directory: the ANN teacher (the run's ``teacher.pt``, trained first if
    missing) fine-tuned through the graded quantiser. Per epoch, the integer network of the epoch's
    weights is validated (its accuracy in the deployed arithmetic chooses the best epoch, then the
    quantised model's validation loss); ``best.pt`` holds the teacher's weights and the quantiser.
    With ``averaging.from_epoch`` E, from epoch E on the running mean of the epoch-end weights and
    batch-norm statistics (one quantiser holds for all of them: it is calibrated once) is what is
    validated, and only those means can be kept: one flatter network instead of a pick among epochs
    whose validation accuracy swings by several points.
    Checkpoints at each epoch's end: ``--resume`` continues at the next epoch, exactly."""

    def setup(self) -> None:
        cfg, dev = self.cfg, self.device
        torch.manual_seed(cfg.seed)
        self.net = copy.deepcopy(self.teacher()).to(dev)
        pick = self.train_idx[torch.randperm(len(self.train_idx), generator=_gen(cfg.seed, 99))[:CALIBRATION_IMAGES]]
        self.quant = calibrate(self.net, self.images[pick].to(dev), cfg.graded_threshold)
        # averaging.from_epoch (features.WeightAveraging): the running mean of the epoch-end weights
        # and batch-norm statistics; the graded stage's only feature
        self.features = [features.WeightAveraging(self)] if features.WeightAveraging.enabled(cfg) else []
        for f in self.features:
            f.setup()
        self.opt = torch.optim.Adam(self.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.adam_eps)
        self.sched = torch.optim.lr_scheduler.OneCycleLR(
            self.opt, max_lr=cfg.lr, total_steps=max(1, cfg.epochs * self.batches_per_epoch))
        if self.resuming and self.ckpt_path.exists():
            ck = load_torch(self.ckpt_path)
            self.net.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["optimizer"])
            self.sched.load_state_dict(ck["scheduler"])
            self.state, self.quant = ck["state"], ck["quant"]
            self.load_features(ck)
            self.console.print(f"resuming at epoch {self.state['epoch'] + 1}")
        else:
            self.console.print("graded messages: " + ", ".join(
                f"conv{k} step {s:.4f} threshold {t:.3f}" for k, (s, t) in enumerate(self.quant, start=1)))

    def checkpoint(self) -> None:
        save_torch({"model": self.net.state_dict(), "optimizer": self.opt.state_dict(),
                    "scheduler": self.sched.state_dict(), "state": self.state, "quant": self.quant,
                    "features": {f.section: f.state_dict() for f in self.features}}, self.ckpt_path)

    def train_one_epoch(self, update=None, stop_after_batches: int | None = None) -> bool:
        """One whole epoch (a killed epoch is redone from its start on resume)."""
        cfg, dev, state = self.cfg, self.device, self.state
        epoch, bs = state["epoch"], cfg.batch_size
        perm = self.epoch_order(epoch)
        self.net.train()
        self.t_epoch = time.perf_counter()
        part = state["partial"] = {"loss": 0.0, "correct": 0, "seen": 0}
        for b in range(self.batches_per_epoch):
            idx = perm[b * bs:(b + 1) * bs]
            x = self.batch_images(idx, epoch, b).to(dev)
            y = self.data.labels[idx].to(dev)
            logits, acts = forward(self.net, x, self.quant)
            loss = F.cross_entropy(logits, y)
            if cfg.distill_weight > 0 or cfg.activations_weight > 0:
                with torch.no_grad():
                    target, target_acts = forward(self.teacher().eval(), x)
            if cfg.distill_weight > 0:  # losses.distill: held to the frozen teacher's answers on the same batch
                loss = mixed_loss(loss, logits, target, cfg.distill_weight, cfg.distill_temperature)
            if cfg.activations_weight > 0:  # losses.activations: held to the teacher's hidden activations
                loss = loss + cfg.activations_weight * activation_loss(acts, target_acts)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            part["loss"] += loss.item() * len(idx)
            part["correct"] += int((logits.argmax(1) == y).sum())
            part["seen"] += len(idx)
            self.batches_done += 1
            if update is not None:
                update(b + 1, f"loss {part['loss'] / part['seen']:.3f}  acc {part['correct'] / part['seen']:.3f}")
            if stop_after_batches is not None and self.batches_done >= stop_after_batches:
                return True
        return False

    @torch.no_grad()
    def validate(self, model=None) -> dict:
        """The integer network's validation accuracy; the quantised model's cross-entropy (of
        ``model``, a teacher-shaped network; the one being trained if None)."""
        model = (self.net if model is None else model).eval()
        idx = self.val_idx
        net = integer_of(model, self.quant, self.model_cfg)
        correct, loss_sum = 0, 0.0
        for i in range(0, len(idx), 64):
            x = self.images[idx[i:i + 64]].to(self.device)
            y = self.data.labels[idx[i:i + 64]].to(self.device)
            correct += int((net(net.encode(x.cpu())).predictions() == y.cpu()).sum())
            loss_sum += F.cross_entropy(forward(model, x, self.quant)[0], y, reduction="sum").item()
        n = max(1, len(idx))
        return {"accuracy": correct / n, "loss": loss_sum / n}

    def end_epoch(self) -> dict:
        state, part = self.state, self.state["partial"]
        kept = self.net
        for f in reversed(self.features):
            kept = f.epoch_end(kept)
        val = self.validate(kept)
        row = {"epoch": state["epoch"] + 1, "train_loss": part["loss"] / max(1, part["seen"]),
               "train_accuracy": part["correct"] / max(1, part["seen"]), "val_loss": val["loss"],
               "val_accuracy": val["accuracy"], "lr": self.sched.get_last_lr()[0],
               "seconds": time.perf_counter() - self.t_epoch, "averaged_epochs": 0}
        for f in self.features:
            row.update(f.row())
        state["history"].append(row)
        if self.keeps(row):
            state["best"] = row
            save_torch({"graded": True, "model": kept.state_dict(), "quant": self.quant,
                        "config": self.model_cfg.to_dict(), "epoch": row["epoch"]}, self.run_dir / "best.pt")
        state["epoch"] += 1
        state["batch"] = 0
        self.checkpoint()
        save_json(self.metrics(), self.run_dir / "metrics.json")
        return row

    def metrics(self) -> dict:
        return {"history": self.state["history"], "best": self.state["best"], "epochs_done": self.state["epoch"],
                "parameters": sum(p.numel() for p in self.net.parameters()), "model": self.model_cfg.name,
                "family": "graded", "quant": [list(q) for q in self.quant], "device": str(self.device),
                "split_sizes": {k: int(len(v)) for k, v in self.data.split.items()},
                "skipped_images": [str(p) for p, _ in self.data.skipped]}


def load_best(ck: dict, cfg: ModelConfig) -> GradedNetwork:
    """The integer network of a graded stage's ``best.pt`` (see :class:`GradedTrainer`)."""
    teacher = Teacher(cfg)
    teacher.load_state_dict(ck["model"])
    return integer_of(teacher.eval(), ck["quant"], cfg)
