"""Teacher probe: the v2 recipe's ANN teacher, trained as the recipe trains it, with an AugMix-style
consistency loss added (research; the model card's thirty-eighth amendment):

    python research/teacher_probe.py OUT_DIR --consistency 12 [--recipe recipes/neurallnet-aria-v2.toml]
        [--set KEY=VALUE ...]

Each batch is drawn as the recipe draws it (the same images, flips and photometric draws, then the
front end) and drawn a second time with an independent photometric draw of the same images; the
loss is the cross-entropy of the first view plus ``--consistency`` times the Jensen-Shannon
divergence between the two views' predicted distributions (Hendrycks et al., AugMix, ICLR 2020,
weight 12 there), so the teacher is pulled to answer alike under any two exposures, stains, noise,
blur and backgrounds that the augmentation draws. With ``--consistency 0`` it calls the product's
``training.distill.train_teacher``, which gives the recipe's own teacher. Writes OUT_DIR/teacher.pt
in the product's format: ``python research/gain_probe.py MODEL.net OUT_DIR 1.0,1.3,1.4`` scores it
behind a model's front end (the v2 models' reference is fitted on the same training images).
Trains on the training split, reads the validation split only to log.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from training import augment, distill
from training import recipe as rc
from training.trainer import Trainer, _console, fit_to_data, prepare_data

ROOT = Path(__file__).resolve().parent.parent


def js_divergence(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean Jensen-Shannon divergence between the softmax distributions of logits a and b."""
    p, q = F.softmax(a, 1), F.softmax(b, 1)
    m = ((p + q) / 2).clamp(1e-7, 1).log()
    return (F.kl_div(m, p, reduction="batchmean") + F.kl_div(m, q, reduction="batchmean")) / 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--recipe", default=str(ROOT / "recipes" / "neurallnet-aria-v2.toml"))
    ap.add_argument("--set", action="append", default=[], dest="sets")
    ap.add_argument("--consistency", type=float, default=12.0)
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = _console()
    r = rc.load(args.recipe, args.sets)
    model_cfg, cfg, root, per_class = rc.compile_stage(r["stages"][0], 1, args.recipe, out, None)
    torch.set_num_threads(cfg.threads)
    data = prepare_data(out, Path(root) if root else None, model_cfg, cfg, per_class, console)
    model_cfg = fit_to_data(model_cfg, data, console)
    tr = Trainer(out, model_cfg, cfg, data, torch.device("cpu"), console, resuming=False, fast=False,
                 show_progress=False)
    seed = cfg.seed if cfg.teacher_seed is None else cfg.teacher_seed
    strength = cfg.color_jitter if cfg.augment else None
    if args.consistency == 0:
        teacher, metrics = distill.train_teacher(
            model_cfg, data.images, data.labels, tr.train_idx, tr.val_idx, cfg.teacher_epochs, seed, tr.gen,
            batch_size=cfg.batch_size, augment_strength=strength, log=console.print, prepare=tr.prepare)
    else:  # train_teacher's loop, with the second view and the consistency term
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            teacher = distill.Teacher(model_cfg).to(memory_format=torch.channels_last)
        seen = tr.prepare(data.images, None)
        bs, lr, epochs = cfg.batch_size, 3e-3, cfg.teacher_epochs
        opt = torch.optim.Adam(teacher.parameters(), lr=lr)
        per_epoch = (len(tr.train_idx) + bs - 1) // bs
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * per_epoch)
        t0 = time.perf_counter()
        for epoch in range(epochs):
            teacher.train()
            perm = tr.train_idx[torch.randperm(len(tr.train_idx), generator=tr.gen(seed, 1000 + epoch))]
            js_sum = 0.0
            for b in range(per_epoch):
                idx = perm[b * bs:(b + 1) * bs]
                x, g = data.images[idx], tr.gen(seed, 1000 + epoch, b)
                if strength is not None:
                    x = augment.augment_batch(x, g, strength=strength)
                x1, x2 = tr.prepare(x, g), tr.prepare(x, tr.gen(seed, 5000 + epoch, b))
                logits = teacher(torch.cat([x1, x2]))
                a, c = logits[:len(idx)], logits[len(idx):]
                js = js_divergence(a, c)
                loss = F.cross_entropy(a, data.labels[idx]) + args.consistency * js
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                js_sum += js.item()
            console.print(f"teacher epoch {epoch + 1}/{epochs}: JS {js_sum / per_epoch:.4f}  val acc "
                          f"{distill.accuracy(teacher, seen[tr.val_idx], data.labels[tr.val_idx]):.4f}")
        teacher.eval()
        metrics = {"epochs": epochs, "consistency": args.consistency,
                   "train_accuracy": distill.accuracy(teacher, seen[tr.train_idx], data.labels[tr.train_idx]),
                   "val_accuracy": distill.accuracy(teacher, seen[tr.val_idx], data.labels[tr.val_idx]),
                   "seconds": time.perf_counter() - t0}
    console.print(f"teacher: {metrics}")
    distill.save_teacher(teacher, model_cfg, metrics, out / "teacher.pt")


if __name__ == "__main__":
    main()
