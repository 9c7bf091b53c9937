"""Where a v2 run's ANN teacher looks, on the validation split (the model card's fifty-third
amendment): the median Grad-CAM ratio at conv3 (heat on the darkest fifth of the pixels over the
heat on the rest, as ``gradcam_ratio.py`` measures a model), and the share of conv1-conv3's
activation energy outside the stained white cells (what the fifty-third to fifty-fifth amendments'
``teacher.cells`` trains down, ``training.distill.outside_cells``; in the recipe file since the
fifty-sixth amendment).

    python research/teacher_cells.py runs/aria-v2-gN [--subset val]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lava_allnet.config import ModelConfig
from lava_allnet.data.images import load_image
from netx import format as nf
from training.augment import cell_mask
from training.checkpoint import load_torch
from training.distill import CELL_LAYERS, load_teacher, outside_cells  # the term teacher.cells trains down

from gradcam_ratio import heat_ratio  # research/: the model card's Grad-CAM ratio, one definition

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a v2 run directory (teacher.pt, model.net, a stage's best.pt)")
    ap.add_argument("--subset", default="val", choices=["val", "train"])
    ap.add_argument("--split", default=str(ROOT / "models" / "neurallnet-aria.split.json"))
    args = ap.parse_args()
    best = load_torch(sorted(args.run.glob("*/best.pt"))[-1])
    teacher = load_teacher(args.run / "teacher.pt", ModelConfig.from_dict(best["config"])).float()
    spec = nf.read(str(args.run / "model.net"))  # its input front end, which the teacher was trained behind
    split = json.loads(Path(args.split).read_text())
    root = (ROOT / split["root"]).resolve()
    paths = sorted(split[args.subset])
    ratios, shares = [], []
    for p in paths:
        img = load_image(root / p, spec.input.shape[1])
        x = torch.from_numpy(np.ascontiguousarray(spec.frontend.apply(img[None])))
        logits, acts = teacher.forward_features(x, CELL_LAYERS)
        shares.append(float(outside_cells({k: a.detach() for k, a in acts.items()}, cell_mask(torch.from_numpy(img[None])).float())))
        a = acts[3]
        a.retain_grad()
        logits[0, int(logits.argmax(1))].backward()
        cam = torch.relu((a.grad[0].mean((1, 2))[:, None, None] * a[0]).sum(0)).detach()
        cam = F.interpolate(cam[None, None], size=img.shape[1:], mode="bilinear", align_corners=False)[0, 0].numpy()
        ratios.append(heat_ratio(cam, img))
    r = np.array(ratios)
    print(json.dumps({"run": str(args.run), "subset": args.subset, "images": len(paths),
                      "gradcam_median": round(float(np.median(r)), 2),
                      "gradcam_quartiles": [round(float(q), 2) for q in np.percentile(r, [25, 75])],
                      "share_above_1_5": round(float(np.mean(r >= 1.5)), 2),
                      "outside_cells": round(float(np.mean(shares)), 3)}))


if __name__ == "__main__":
    main()
