"""A sharpness shortcut? How much of the ALL smear set per-image focus and compression statistics
alone classify, with no colour and no spatial layout.

Per image and channel, after the model's input front end (``--frontend``, default Reinhard: every
channel's mean and std already equal, so what is left is texture): the mean absolute Laplacian, the
mean absolute gradient, and the share of spectral power above half the Nyquist frequency, each
divided by the channel's std; and, at the file's own resolution, the JPEG blockiness (mean
absolute step across the 8-pixel grid over the mean step inside it). 12 numbers. A standardised
logistic regression on them, 5-fold stratified cross-validation (seed 0), on the development images
(the shipped split's train + val; the test images are never read), as ``colour_baseline.py``.

    python research/sharpness_baseline.py ../shared/data/all-aria/original [--size 128] [--frontend reinhard]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lava_allnet.data import images as di
from lava_allnet.frontend import FrontEnd

ROOT = Path(__file__).resolve().parent.parent


def texture(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8 → (N, 9): |Laplacian|, |gradient|, high-frequency power share, per channel."""
    x = images.astype(np.float64)
    std = x.reshape(len(x), 3, -1).std(-1) + 1e-6
    lap = np.abs(4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:])
    grad = np.abs(np.diff(x, axis=-1))[..., :-1, :] + np.abs(np.diff(x, axis=-2))[..., :, :-1]
    p = np.abs(np.fft.fft2(x - x.mean((-2, -1), keepdims=True))) ** 2
    f = np.abs(np.fft.fftfreq(x.shape[-1]))
    high = (f[:, None] > 0.25) | (f[None, :] > 0.25)
    share = (p * high).sum((-2, -1)) / (p.sum((-2, -1)) + 1e-9)
    return np.concatenate([lap.mean((-2, -1)) / std, grad.mean((-2, -1)) / std, share], 1)


def blockiness(path: Path) -> np.ndarray:
    """(3,): per channel, mean |step| across 8-pixel block edges over mean |step| elsewhere (1: none)."""
    x = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    d = np.abs(np.diff(x, axis=1))  # horizontal steps between columns j and j+1
    edge = (np.arange(d.shape[1]) % 8) == 7
    return d[:, edge].mean((0, 1)) / (d[:, ~edge].mean((0, 1)) + 1e-9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", type=Path)
    ap.add_argument("--split", type=Path, default=ROOT / "models" / "neurallnet-aria.split.json")
    ap.add_argument("--frontend", default="reinhard")
    ap.add_argument("--size", type=int, default=128)
    args = ap.parse_args()
    ds = di.scan_image_folder(args.data)
    split = di.load_split(args.split, ds)
    dev = np.concatenate([split["train"], split["val"]])
    paths = [ds.paths[i] for i in dev]
    loaded = di.load_images(paths, args.size, labels=[int(ds.labels[i]) for i in dev])
    images = loaded.images
    if args.frontend != "none":
        images = FrontEnd(args.frontend).fit(images).apply(images)
    y = loaded.labels
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    out = {"frontend": args.frontend, "images": int(len(y))}
    blocks = np.stack([blockiness(p) for p in paths])
    for name, X in (("texture", texture(images)), ("blockiness", blocks),
                    ("both", np.concatenate([texture(images), blocks], 1))):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        out[f"{name}_cv_accuracy"] = round(float(cross_val_score(model, X, y, cv=cv).mean()), 4)
    out["majority_class"] = round(float(np.bincount(y).max() / len(y)), 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
