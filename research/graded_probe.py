"""What a graded-spike (sigma-delta) network of the v2 teacher's shape would cost and keep (research).

A sigma-delta neuron (Loihi 2's graded spikes, lava-dl's ``slayer.block.sigma_delta``) sends its
activation as one graded message when it changes by at least its threshold. On a static image each
neuron settles once, so one inference costs one pass of messages from the neurons whose activation
reaches the threshold: synaptic ops = Σ over layers of (active inputs × their fan-out), against the
ANN's MACs, where a binary-spike rate code pays about one op per MAC for every spike per neuron
(v2, run 8: 0.60 ops per ANN MAC at about 0.56 spikes per neuron and image, T = 8).

This probe runs a run's ANN teacher (``RUN_DIR/teacher.pt``: NeurALLNet's conv stack, batch norm,
ReLU; no SE gates) behind a model file's front end on the validation images, with each layer's
ReLU output rounded to 8 bits of its 99.9th percentile and zeroed below a threshold of F times that
layer's mean positive activation (both measured on 256 training images), for each F given. Printed
per F: validation accuracy (clean, at the given exposure gains, and with ``--robustness`` under the
issue's noise, salt-and-pepper, blur and occlusion and on ``segmented/``), each layer's share of
neurons that send, exact synaptic ops per ANN MAC of that pattern (the image sent once) and the
Loihi 1 per-op energy:

    python research/graded_probe.py models/neurallnet-aria-v2.net runs/aria-v2h --fracs 0,0.5,1,2 --gains 1.3

- ``--ste F --epochs N``: first fine-tune the teacher for N epochs on the training images under the
  v2 recipe's augmentation through the rounding and threshold at F (straight-through gradients;
  the quantiser calibrated before and then held), and probe that quantiser.
- ``--augment strong``: fine-tune under noise up to σ16, blur up to σ2 and occlusion up to 25%
  instead of the v2 recipe's σ8, σ1 and 15%.
- ``--l1 L``: add an activation penalty while fine-tuning: L × Σ over layers of (the layer's share
  of the ANN's MACs that its activations drive) × (its mean activation over its mean positive
  activation at the start), a differentiable stand-in for the ops a graded network sends.
- ``--int8``: fold batch norm into the convs and round their weights to 8 bits before probing, and
  count the channels whose folded bias alone reaches the threshold (a sigma-delta neuron would
  send from it before its input arrives: ``graded_lava_check.py``); ``--clamp-bias N`` holds those
  biases below it and fine-tunes the folded network so for N epochs.

The model card's figures: ``--gains 0.5,0.7,1.3 --robustness --ste 1 --epochs 30 [--int8]``.
Validation split of models/neurallnet-aria.split.json only; no test image is read.
"""
import argparse
import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

import lava_allnet
from lava_allnet.api import dataset_inputs
from lava_allnet.config import ModelConfig
from lava_allnet.data import images as di
from lava_allnet.evaluation import distort
from hw_targets.profile import load_target
from training import augment
from training.checkpoint import load_torch
from training.distill import load_teacher

AUGMENTS = {  # the v2 recipe's; and one reaching the noise, blur and occlusion severities
    "v2": augment.Photometric(gain=(0.5, 1.4), contrast=0.1, stain=0.05, noise=8.0, blur=1.0, occlusion=0.15),
    "strong": augment.Photometric(gain=(0.5, 1.4), contrast=0.1, stain=0.05, noise=16.0, blur=2.0, occlusion=0.25),
}


def fold(teacher):
    """A copy of the teacher with each batch norm folded into its conv (weights and bias)."""
    t = copy.deepcopy(teacher).eval()
    mods = list(t.features)
    for i, m in enumerate(mods):
        if isinstance(m, torch.nn.Conv2d) and isinstance(mods[i + 1], torch.nn.BatchNorm2d):
            t.features[i] = fuse_conv_bn_eval(m, mods[i + 1])
            t.features[i + 1] = torch.nn.Identity()
    return t


def round8(t):
    """Each conv's and the read-out's weights rounded to 8 bits per layer (symmetric, 127 levels a
    side), in place: what a chip holds."""
    with torch.no_grad():
        for m in [m for m in t.features if isinstance(m, torch.nn.Conv2d)] + [t.head]:
            step = float(m.weight.abs().max()) / 127
            m.weight.copy_(torch.round(m.weight / step) * step)
    return t


def calibrate(teacher, x: torch.Tensor, frac: float) -> list[tuple[float, float]]:
    """Per layer (8-bit step, threshold) from images x: the step is the 99.9th percentile of the layer's
    activation over 255; the threshold frac times its mean positive activation (at least half a step)."""
    with torch.no_grad():
        acts = forward(teacher, x)[1]
    out = []
    for a in acts:
        step = float(torch.quantile(a.flatten()[::7], 0.999)) / 255
        out.append((step, max(frac * float(a[a > 0].mean()), step / 2)))
    return out


def forward(teacher, x: torch.Tensor, quant: list[tuple[float, float]] | None = None):
    """Logits, per-layer ReLU outputs (graded messages: quantised, zero below the threshold) and the
    conv modules. With quant, gradients pass straight through the rounding, and not below the threshold."""
    h = (x.float() / 255).contiguous()
    acts, convs, layer = [], [], 0
    for m in teacher.features:
        if isinstance(m, torch.nn.Conv2d):
            convs.append(m)
        h = m(h)
        if isinstance(m, torch.nn.ReLU):
            if quant is not None:
                step, theta = quant[layer]
                q = torch.clamp(torch.round(h / step), 0, 255) * step
                h = torch.where(h >= theta, h + (q - h).detach(), torch.zeros_like(h))
            acts.append(h)
            layer += 1
    return teacher.head(h.flatten(1)), acts, convs


def synaptic_ops(x: torch.Tensor, acts, convs, head) -> tuple[float, float]:
    """Per image: exact ops of the active pattern (input once) and the ANN's MACs."""
    ops = macs = 0.0
    inputs = [(x > 0).float()] + [(a > 0).float() for a in acts[:-1]]
    for m, active in zip(convs, inputs):
        ones = torch.ones(m.out_channels, m.in_channels, *m.kernel_size)
        fan = F.conv2d(active, ones, stride=m.stride, padding=m.padding)  # active inputs per output neuron
        ops += float(fan.sum()) / len(x)
        n_out = fan[0].numel()
        macs += n_out * m.in_channels * m.kernel_size[0] * m.kernel_size[1]
    ops += float((acts[-1] > 0).float().sum()) / len(x) * head.out_features
    macs += head.in_features * head.out_features
    return ops, macs


def finetune(teacher, fe, xtr: torch.Tensor, ytr: torch.Tensor, l1: float, epochs: int, lr: float,
             ste: float | None = None, seed: int = 0, quant=None, project=None, photometric: str = "v2"):
    """The teacher trained further under the v2 augmentation with the activation penalty (module doc);
    with ste, through the graded quantiser at threshold fraction ste, calibrated before and then held
    (returned); or through a given quant. project: called after every step."""
    with torch.no_grad():
        teacher.eval()
        xcal = torch.from_numpy(fe.apply(xtr[:256].numpy()))
        _, acts, convs = forward(teacher, xcal)
        ref = [float(a[a > 0].mean()) for a in acts]
        _, macs = synaptic_ops(xtr[:1], acts, convs, teacher.head)
        drive = [m.out_channels * m.kernel_size[0] * m.kernel_size[1] / (m.stride[0] * m.stride[1]) for m in convs[1:]]
        drive.append(float(teacher.head.out_features))
        share = [d * a[0].numel() / macs for d, a in zip(drive, acts)]  # ≈ ops per MAC at density 1
    if quant is None and ste is not None:
        quant = calibrate(teacher, xcal, ste)
    opt = torch.optim.Adam(teacher.parameters(), lr=lr)
    bs, steps = 16, (len(xtr) + 15) // 16
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps)
    for epoch in range(epochs):
        teacher.train()
        g = torch.Generator().manual_seed(seed * 1000 + epoch)
        perm = torch.randperm(len(xtr), generator=g)
        total = pen_sum = 0.0
        for b in range(steps):
            idx = perm[b * bs:(b + 1) * bs]
            x = AUGMENTS[photometric](augment.augment_batch(xtr[idx], g, strength=0.0), g)
            logits, acts, _ = forward(teacher, torch.from_numpy(fe.apply(x.numpy())), quant)
            pen = sum(s * a.mean() / r for s, a, r in zip(share, acts, ref))
            loss = F.cross_entropy(logits, ytr[idx]) + l1 * pen
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if project is not None:
                project()
            total += loss.item()
            pen_sum += pen.item()
        print(f"fine-tune epoch {epoch + 1}/{epochs}: loss {total / steps:.4f}, penalty {pen_sum / steps:.4f}", flush=True)
    teacher.eval()
    return quant


def energy_uj(x: torch.Tensor, acts, ops: float) -> float:
    """Per image, ``profile``'s Loihi 1 per-op model at one step: every synaptic op, every neuron's
    update (active if it sends), every message (input pixels and the read-out not counted as neurons)."""
    e = load_target("loihi1")["energy_pj"]
    neurons = sum(a[0].numel() for a in acts)
    sent = sum(float((a > 0).float().sum()) for a in acts) / len(x)
    pj = (ops * e["synaptic_op"] + sent * (e["neuron_update_active"] + e["spike_within_tile"])
          + (neurons - sent) * e["neuron_update_inactive"])
    return pj / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("run_dir")
    ap.add_argument("--fracs", default="0,0.5,1")
    ap.add_argument("--gains", default="", help="exposure gains to score, e.g. 0.5,0.7,1.3")
    ap.add_argument("--robustness", action="store_true",
                    help="also score the issue's noise σ16, salt-and-pepper 3%%, blur σ1.6, occlusion 0.2 and the "
                         "validation images from segmented/")
    ap.add_argument("--l1", type=float, default=0.0)
    ap.add_argument("--epochs", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--ste", type=float, default=None,
                    help="fine-tune through the graded quantiser at this threshold fraction (then probe it alone)")
    ap.add_argument("--int8", action="store_true",
                    help="probe with batch norm folded into the convs and their weights rounded to 8 bits")
    ap.add_argument("--clamp-bias", type=int, default=-1, metavar="N",
                    help="with --int8 and --ste: each folded bias held below its layer's threshold (minus one step), so "
                         "no sigma-delta neuron sends from its bias alone before its input arrives, and the folded "
                         "network fine-tuned so for N epochs")
    ap.add_argument("--augment", default="v2", choices=sorted(AUGMENTS), help="the fine-tunes' augmentation")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    fracs = [float(v) for v in args.fracs.split(",")]
    gains = [float(v) for v in args.gains.split(",") if v]
    torch.set_num_threads(args.threads)
    model = lava_allnet.load(args.model)
    inputs = dataset_inputs(model.spec, "../shared/data/all-aria/original", "models/neurallnet-aria.split.json", "val")
    y = torch.as_tensor(np.asarray(inputs.labels))
    teacher_path = f"{args.run_dir}/teacher.pt"
    teacher = load_teacher(teacher_path, ModelConfig.from_dict(load_torch(teacher_path)["config"])).eval()
    teacher = teacher.to(memory_format=torch.contiguous_format)
    fe = model.spec.frontend
    ds = di.scan_image_folder("../shared/data/all-aria/original")
    split = di.load_split("models/neurallnet-aria.split.json", ds)
    xtr = torch.from_numpy(di.load_images([ds.paths[i] for i in split["train"]], model.spec.input.shape[1]).images)
    ytr = torch.as_tensor(ds.labels[split["train"]])
    xcal = torch.from_numpy(fe.apply(xtr[:256].numpy()))  # calibration: training images only
    held = None
    if args.epochs:
        held = finetune(teacher, fe, xtr, ytr, args.l1, args.epochs, args.lr, args.ste, photometric=args.augment)
    if args.int8:
        teacher = fold(teacher)
        if args.clamp_bias >= 0 and held:
            convs = [m for m in teacher.features if isinstance(m, torch.nn.Conv2d)]

            def clamp() -> None:
                with torch.no_grad():
                    for m, (step, theta) in zip(convs, held):
                        m.bias.clamp_(max=theta - step)

            clamp()
            if args.clamp_bias:
                finetune(teacher, fe, xtr, ytr, 0.0, args.clamp_bias, args.lr, quant=held, project=clamp,
                         photometric=args.augment)
        round8(teacher)
    x = torch.from_numpy(fe.apply(inputs.images))
    distorted = {}
    if args.robustness:
        for kind, sev in (("gaussian_noise", 16.0), ("salt_pepper", 0.03), ("gaussian_blur", 1.6), ("occlusion", 0.2)):
            distorted[f"{kind} {sev:g}"] = torch.from_numpy(fe.apply(distort(inputs.images, kind, sev)))
        seg = di.load_images([str(p).replace("/original/", "/segmented/") for p in inputs.paths],
                             model.spec.input.shape[1]).images
        distorted["segmented"] = torch.from_numpy(fe.apply(seg))
    acc = lambda logits: float((logits.argmax(1) == y).float().mean())  # noqa: E731
    with torch.no_grad():
        print(f"teacher, float: validation {acc(forward(teacher, x)[0]):.3f}")
        for frac in ([args.ste] if held else fracs):
            quant = held or calibrate(teacher, xcal, frac)
            logits, acts, convs = forward(teacher, x, quant)
            ops, macs = synaptic_ops(x, acts, convs, teacher.head)
            line = [f"F {frac:g}: validation {acc(logits):.3f}"]
            for g in gains:
                xg = torch.from_numpy(fe.apply(distort(inputs.images, "illumination", g)))
                line.append(f"gain {g:g} {acc(forward(teacher, xg, quant)[0]):.3f}")
            for name, xd in distorted.items():
                line.append(f"{name} {acc(forward(teacher, xd, quant)[0]):.3f}")
            line.append("active " + " / ".join(f"{float((a > 0).float().mean()):.3f}" for a in acts))
            line.append(f"ops {ops / 1e6:.2f} M, MACs {macs / 1e6:.2f} M, {ops / macs:.3f} per MAC")
            line.append(f"Loihi 1 per-op energy {energy_uj(x, acts, ops):.0f} µJ")
            if args.int8:  # a sigma-delta neuron whose bias alone reaches its threshold sends before its input arrives
                biases = [m.bias for m in convs]
                line.append("channels with bias >= threshold " + " / ".join(
                    f"{int((b >= t).sum())} of {b.numel()}" for b, (_, t) in zip(biases, quant)))
            print(", ".join(line), flush=True)


if __name__ == "__main__":
    main()
