"""What over-exposure leaves of an image after a front end, on training images only (no model).

At gain 1.3 most of the smear's background and nearly all of its blue channel clip at 255, and
Reinhard (each channel's mean and std set to the training images' average) then stretches what is
left of the blue channel several-fold. This probe measures, for Reinhard and three variants that
are not in the product, how far each exposure gain moves the front end's output from the same
image at gain 1 (mean absolute difference in grey levels, over the stained white cells and over
the rest; ``training.augment.cell_mask``), and how much of the colour shortcut each leaves (the
21-statistic logistic regression of ``colour_baseline.py``, 5-fold, on the same images):

- ``product``: the product's front end (``FrontEnd("reinhard")``): its integer offset is bounded
  to ±256 grey levels, so where a channel's stretch is large (a clipped, nearly flat channel) the
  channel is pushed to 255 instead of to the reference mean;
- ``reinhard``: Reinhard exactly (float, unbounded offset);
- ``cap2``: Reinhard with each channel's stretch capped at 2 (a clipped channel stays flat);
- ``shared``: one stretch for all three channels (the mean of the reference stds over the mean of
  the image's), per-channel offsets: channels keep their relative contrast;
- ``unsat``: Reinhard's statistics over the pixels where no channel is at 250 or above (all
  pixels where fewer than 1% are left).

    python research/saturation_probe.py ../shared/data/all-aria/original [--per-class 60]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from colour_baseline import features
from lava_allnet.data import images as di
from lava_allnet.frontend import OFFSET_BOUND, SHIFT, FrontEnd
from training.augment import cell_mask

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("product", "reinhard", "cap2", "shared", "unsat")
GAINS = (0.5, 0.7, 1.2, 1.3, 1.4)


def stats(x: np.ndarray, unsat: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per image and channel mean and std of (N, 3, H, W) uint8, optionally over unsaturated pixels."""
    f = x.astype(np.float64).reshape(len(x), 3, -1)
    if not unsat:
        return f.mean(-1), f.std(-1)
    ok = (x.max(1) < 250).reshape(len(x), 1, -1)
    ok = np.where(ok.mean(-1, keepdims=True) >= 0.01, ok, True)
    n = ok.sum(-1)
    mean = (f * ok).sum(-1) / n
    return mean, np.sqrt(np.maximum((f * f * ok).sum(-1) / n - mean ** 2, 0))


class Variant:
    def __init__(self, name: str, train: np.ndarray):
        self.name = name
        mean, std = stats(train, name == "unsat")
        self.rmean, self.rstd = mean.mean(0), std.mean(0)

    def __call__(self, x: np.ndarray) -> np.ndarray:
        mean, std = stats(x, self.name == "unsat")
        std = np.maximum(std, 1.0)
        gain = self.rstd / std
        if self.name == "cap2":
            gain = np.minimum(gain, 2.0)
        elif self.name == "shared":
            gain = np.repeat((self.rstd.mean() / std.mean(1))[:, None], 3, 1)
        offset = self.rmean - gain * mean
        y = x.astype(np.float64) * gain[:, :, None, None] + offset[:, :, None, None]
        return np.clip(np.round(y), 0, 255).astype(np.uint8)

    apply = __call__


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--split", type=Path, default=ROOT / "models" / "neurallnet-aria.split.json")
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    ds = di.scan_image_folder(args.data)
    train = di.load_split(args.split, ds)["train"]
    rng = np.random.default_rng(0)
    pick = np.concatenate([rng.choice(train[ds.labels[train] == c], args.per_class, replace=False)
                           for c in range(len(ds.class_names))])
    loaded = di.load_images([ds.paths[i] for i in pick], args.size, labels=[int(ds.labels[i]) for i in pick])
    x, y = loaded.images, loaded.labels
    cells = cell_mask(torch.from_numpy(x)).numpy()[:, 0]  # (N, H, W)
    out = {"images": int(len(x))}
    product = FrontEnd("reinhard").fit(x)
    gained = {g: np.clip(np.round(x * g), 0, 255).astype(np.uint8) for g in GAINS}
    for g in (1.0, *GAINS):
        xg = gained.get(g, x)
        _, o = product.coefficients(xg)
        out[f"clipping at gain {g}"] = {  # per channel: share of pixels at 255; share of images at the offset bound
            "pixels_at_255": [round(float(v), 3) for v in (xg == 255).mean((0, 2, 3))],
            "images_at_offset_bound": [round(float(v), 3) for v in (np.abs(o) == OFFSET_BOUND << SHIFT).mean(0)]}
        print(f"gain {g}", json.dumps(out[f"clipping at gain {g}"]))
    for name in VARIANTS:
        fe = product.apply if name == "product" else Variant(name, x)
        base = fe(x)
        row = {"blue_mean": round(float(base[:, 2].mean()), 1), "shortcut_cv": round(float(cross_val_score(
            make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)), features(base), y,
            cv=StratifiedKFold(5, shuffle=True, random_state=0)).mean()), 3)}
        for g in GAINS:
            yg = fe(gained[g])
            moved = np.abs(yg.astype(int) - base.astype(int))
            m = moved.mean(1)  # (N, H, W), over channels
            row[f"gain {g}"] = {"cells": round(float(m[cells].mean()), 1), "rest": round(float(m[~cells].mean()), 1),
                                "blue_cells": round(float(moved[:, 2][cells].mean()), 1),
                                "blue_mean": round(float(yg[:, 2].mean()), 1)}
        out[name] = row
        print(name, json.dumps(row))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
