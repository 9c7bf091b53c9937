"""ANN-to-SNN conversion probe (research): how much of the ANN teacher a spiking student keeps before
any training, by the recipe's init (``training.distill.student_from_teacher`` + rate calibration)
against a conversion that also carries the teacher's batch-norm shifts as neuron biases and sets
each layer's scale from the teacher's activations (Rueckauer et al. 2017, data-based normalisation).

    python research/convert_probe.py RUN_DIR [--gains 1,1,1,1,1,1] [--percentile 99.9] [--target-rate 0.1]

RUN_DIR: a v2 recipe run (teacher.pt, 1-distill/best.pt for the model config). Validation split only.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from lava_allnet import fixed_point as fx
from lava_allnet.config import ModelConfig
from lava_allnet.data.images import load_image
from lava_allnet.model import ConvBlock, SEBlock, build_model
from training.checkpoint import load_torch
from training.distill import load_teacher, student_from_teacher

CLASSES = ["Benign", "Early", "Pre", "Pro"]
# Lava's largest bias in current units (what quantize_norm_mean clamps to), read before --no-bias-limit lifts it
BIAS_LIMIT = -fx.BIAS_MIN / (1 << fx.BIAS_EXP)


def images_of(split: dict, subset: str, size: int, limit: int | None = None, seed: int = 0):
    root = Path(split["root"])
    paths = list(split[subset])
    if limit:
        rng = np.random.default_rng(seed)
        paths = [paths[i] for i in rng.choice(len(paths), limit, replace=False)]
    labels = np.array([CLASSES.index(Path(p).parts[0]) for p in paths])
    return np.stack([load_image(root / p, size) for p in paths]), labels


@torch.no_grad()
def accuracy(net, x_enc, labels) -> float:
    pred = torch.cat([net(x_enc[i:i + 32]).predictions() for i in range(0, len(x_enc), 32)]).numpy()
    return float((pred == labels).mean())


@torch.no_grad()
def teacher_layers(teacher, x_uint8):
    """Per conv: (input activation a_{l-1}, pre-activation p_l, relu a_l); and the logits."""
    h = (x_uint8.float() / 255)
    out, mods = [], list(teacher.features)
    for i in range(0, len(mods), 3):
        conv, bn = mods[i], mods[i + 1]
        p = bn(conv(h))
        a = torch.relu(p)
        out.append((h, p, a))
        h = a
    return out, teacher.head(h.flatten(1)), h


@torch.no_grad()
def convert(net, teacher, x_uint8, x_enc, percentile: float) -> dict:
    """Layer by layer on the calibration images: weights W·gamma/sigma times a layer scale, the
    norm's mean = -k·(teacher's shift), k the student's current per unit of the teacher's
    pre-activation, the scale bisected so the student's mean rate matches mean(min(a/λ, 1))."""
    teacher.eval()
    layers, logits, _ = teacher_layers(teacher, x_uint8)
    convs = [m for m in teacher.features if isinstance(m, torch.nn.Conv2d)]
    norms = [m for m in teacher.features if isinstance(m, torch.nn.BatchNorm2d)]
    net.eval()
    h, first, li, report = x_enc, True, 0, {}
    for name, block in net.blocks.items():
        if isinstance(block, SEBlock):
            block.w1.zero_(); block.b1.zero_(); block.w2.zero_(); block.b2.fill_(1.0)  # gate = 1: identity
            h = block(h)[0]
            continue
        if isinstance(block, ConvBlock):
            conv, bn = convs[li], norms[li]
            scale = bn.weight / (bn.running_var + bn.eps).sqrt()
            w_t = conv.weight * scale.view(-1, 1, 1, 1)
            shift = scale * (conv.bias - bn.running_mean) + bn.bias
            _, p, a = layers[li]
            q = p - shift.view(1, -1, 1, 1)  # the teacher's pre-activation without its shift
            run = lambda inp, once=(first and net.input_once): block(inp, net.time_steps, once=once)
            li += 1
        else:
            w_t, shift = teacher.head.weight.repeat_interleave(net.population, 0), teacher.head.bias.repeat_interleave(net.population)
            p = logits.repeat_interleave(net.population, 1)
            q = p - shift
            a = torch.relu(p)
            run = lambda inp: block(inp)
        first = False
        lam = float(torch.quantile(a.flatten()[torch.randperm(a.numel())[:1_000_000]], percentile / 100))
        target = float((a / lam).clamp(max=1).mean())
        w = block.synapse.weight
        norm = block.neuron.norm
        shape = w.shape

        def set_scale(alpha: float):
            w.copy_((w_t * alpha).reshape(shape))
            norm.running_mean.zero_()
            _, current, _ = run(h)
            i_bar = current.mean(1)  # (N, C, ...) per step
            k = float((i_bar * q).sum() / (q * q).sum())
            norm.running_mean.copy_(-k * shift)
            spikes = run(h)[0]
            return float((spikes > 0).float().mean()), k

        lo, hi = 1e-3, 1e4
        for _ in range(24):
            mid = (lo * hi) ** 0.5
            rate, k = set_scale(mid)
            lo, hi = (mid, hi) if rate < target else (lo, mid)
        rate, k = set_scale((lo * hi) ** 0.5)
        clipped = float((norm.running_mean.abs() > BIAS_LIMIT).float().mean())
        h = run(h)[0]
        r = (h > 0).float().mean(1).flatten()
        corr = float(np.corrcoef(r.numpy(), (a / lam).clamp(max=1).flatten().numpy())[0, 1])
        report[name] = {"rate": round(rate, 4), "target": round(target, 4), "k": round(k, 3), "lambda": round(lam, 2),
                        "bias_clipped": clipped, "corr": round(corr, 3)}
    return report


@torch.no_grad()
def correlations(net, teacher, x_uint8, x_enc) -> tuple[dict, dict]:
    """Per conv layer, from one run of the student: the correlation of its spike rate with the
    teacher's activation, and its mean spike rate per neuron and step."""
    layers, _, _ = teacher_layers(teacher, x_uint8)
    out = net(x_enc, keep=tuple(n for n in net.blocks if not n.startswith("se")))
    corr, rates = {}, {}
    for i, name in enumerate(n for n in net.blocks if n.startswith("conv")):
        spikes = (out.activations[name] > 0).float()
        r = spikes.mean(1).flatten().numpy()
        corr[name] = round(float(np.corrcoef(r, layers[i][2].flatten().numpy())[0, 1]), 3)
        rates[name] = round(float(spikes.mean()), 4)
    return corr, rates


@torch.no_grad()
def batch_means(net, x_enc) -> None:
    """Running means = one batch's means (what the recipe's batch-mean norm converges to)."""
    norms = [b.neuron.norm for b in net.blocks.values() if hasattr(b, "neuron") and b.neuron.norm is not None]
    saved = [n.momentum for n in norms]
    for n in norms:
        n.momentum = 1.0
    net.train()
    net(x_enc)
    for n, m in zip(norms, saved):
        n.momentum = m
    net.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("--gains", default="")
    ap.add_argument("--percentile", type=float, default=99.9)
    ap.add_argument("--time-steps", type=int, default=0)
    ap.add_argument("--threshold", type=float, default=0.0, help="the neuron threshold for binary input (graded layers scale it)")
    ap.add_argument("--calib", type=int, default=128)
    ap.add_argument("--target-rate", type=float, default=0.1, help="the recipe init's calibration rate per conv layer")
    ap.add_argument("--save", type=Path)
    ap.add_argument("--no-bias-limit", action="store_true", help="diagnosis only: lift Lava's bias range")
    ap.add_argument("--no-weight-limit", action="store_true", help="diagnosis only: float weights")
    args = ap.parse_args()
    torch.set_num_threads(2)
    if args.no_bias_limit:
        fx.BIAS_MIN, fx.BIAS_MAX = -2**30, 2**30
    if args.no_weight_limit:
        fx.quantize_weight = lambda w: w
        import lava_allnet.model as lm
        lm.fx.quantize_weight = fx.quantize_weight
    ck = load_torch(args.run / "1-distill" / "best.pt")
    cfg = ModelConfig.from_dict(ck["config"])
    if args.gains:
        cfg = dataclasses.replace(cfg, threshold_gains=tuple(int(g) for g in args.gains.split(",")))
    if args.threshold:
        cfg = dataclasses.replace(cfg, neuron=dataclasses.replace(cfg.neuron, threshold=args.threshold))
    if args.time_steps:
        cfg = dataclasses.replace(cfg, time_steps=args.time_steps)
    teacher = load_teacher(args.run / "teacher.pt", cfg)
    split = json.load(open(args.run / "split.json"))
    val, val_y = images_of(split, "val", cfg.input_size)
    cal, _ = images_of(split, "train", cfg.input_size, limit=args.calib)
    torch.manual_seed(0)
    net = build_model(cfg)
    fe = net.frontend
    val_t, cal_t = torch.from_numpy(fe.apply(val)), torch.from_numpy(fe.apply(cal))
    t_acc = float((teacher(val_t).argmax(1).numpy() == val_y).mean())
    # the recipe's init
    student_from_teacher(net, teacher)
    net.calibrate(net.encode(cal_t[:32]), target_rate=args.target_rate)
    batch_means(net, net.encode(cal_t))
    base = accuracy(net, net.encode(val_t), val_y)
    base_corr, base_rates = correlations(net, teacher, cal_t, net.encode(cal_t))
    # the conversion
    net2 = build_model(cfg)
    student_from_teacher(net2, teacher)
    rep = convert(net2, teacher, cal_t, net2.encode(cal_t), args.percentile)
    conv = accuracy(net2, net2.encode(val_t), val_y)
    print(json.dumps({"teacher_val": t_acc, "recipe_init_val": base, "converted_val": conv, "recipe_init_corr": base_corr,
                      "target_rate": args.target_rate, "recipe_init_rates": base_rates, "gains": cfg.gains(),
                      "time_steps": cfg.time_steps, "percentile": args.percentile, "layers": rep}))
    if args.save:
        torch.save({"model": net2.state_dict(), "config": cfg.to_dict()}, args.save)


if __name__ == "__main__":
    main()
