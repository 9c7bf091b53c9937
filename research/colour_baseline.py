"""The colour shortcut: how much of the ALL smear set global colour statistics alone classify.

Per image (at 64x64): each channel's mean, std and 1/10/50/90th percentiles, plus the grey level's
mean, std and 1st percentile: 21 numbers, no spatial information. A standardised logistic
regression on them, 5-fold stratified cross-validation (seed 0), on the development images (the
shipped split's train + val; the test images are never read). ``--frontend NAME`` applies one of
lava-allnet's input front ends first: what the shortcut keeps after it.

    python research/colour_baseline.py ../shared/data/all-aria/original [--frontend NAME]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lava_allnet.data import images as di

ROOT = Path(__file__).resolve().parent.parent


def features(images: np.ndarray) -> np.ndarray:
    """images: (N, 3, H, W) uint8 → (N, 21)."""
    x = images.astype(np.float64)
    out = []
    for c in range(3):
        ch = x[:, c].reshape(len(x), -1)
        out += [ch.mean(1), ch.std(1), *np.percentile(ch, [1, 10, 50, 90], axis=1)]
    grey = x.mean(1).reshape(len(x), -1)
    out += [grey.mean(1), grey.std(1), np.percentile(grey, 1, axis=1)]
    return np.stack(out, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--split", type=Path, default=ROOT / "models" / "neurallnet-aria.split.json")
    ap.add_argument("--frontend", default="none")
    ap.add_argument("--size", type=int, default=64)
    args = ap.parse_args()
    ds = di.scan_image_folder(args.data)
    split = di.load_split(args.split, ds)
    dev = np.concatenate([split["train"], split["val"]])
    loaded = di.load_images([ds.paths[i] for i in dev], args.size, labels=[int(ds.labels[i]) for i in dev])
    images = loaded.images
    if args.frontend != "none":
        from lava_allnet.frontend import FrontEnd

        images = FrontEnd(args.frontend).fit(images).apply(images)
    X, y = features(images), loaded.labels
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    scores = cross_val_score(model, X, y, cv=StratifiedKFold(5, shuffle=True, random_state=0))
    print(json.dumps({"frontend": args.frontend, "images": int(len(y)), "features": int(X.shape[1]),
                      "cv_accuracy": round(float(scores.mean()), 4), "folds": [round(float(s), 4) for s in scores]}))


if __name__ == "__main__":
    main()
