"""What `segmented/` keeps of the cells, per class, on the test split (no model): the share of each
image's pixels that are not black (any channel above the front end's ``BLACK`` = 16), and the share
of the original image's stained white-cell pixels (``training.augment.cell_mask``: nuclei and blast
cytoplasm, the pixels background replacement keeps) that are not black in its segmented copy, as
medians, with the number of images that keep under 10% of their cell pixels; then the colour of
what it keeps: the median colour of the kept pixels in the segmented copy and at the same places in
the original, the correlation of each channel between the two, and how much of each channel's
variance one affine colour map per image (least squares, original RGB to segmented RGB) explains
(R²; images with at least 200 kept pixels):

    python research/segmented_content.py [SPLIT.json]
"""
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lava_allnet.frontend import BLACK
from training.augment import cell_mask

split = json.load(open(sys.argv[1] if len(sys.argv) > 1 else "models/neurallnet-aria.split.json"))
original = Path(split["root"]).resolve()
segmented = original.parent / "segmented"
rows, colours = defaultdict(list), defaultdict(list)
for rel in split["test"]:
    a = np.array(Image.open(original / rel).convert("RGB"))
    b = np.array(Image.open(segmented / rel).convert("RGB"))
    cells = cell_mask(torch.from_numpy(a).permute(2, 0, 1)[None])[0, 0].numpy()
    kept, name = b.max(2) > BLACK, rel.split("/")[0]
    rows[name].append((kept.mean(), (kept & cells).sum() / max(1, cells.sum())))
    if kept.sum() >= 200:
        o, k = a[kept].astype(float), b[kept].astype(float)
        corr = [np.corrcoef(k[:, c], o[:, c])[0, 1] for c in range(3)]
        x = np.c_[o, np.ones(len(o))]
        fit = x @ np.linalg.lstsq(x, k, rcond=None)[0]
        r2 = 1 - ((k - fit) ** 2).sum(0) / ((k - k.mean(0)) ** 2).sum(0)
        colours[name].append(np.concatenate([k.mean(0), o.mean(0), corr, r2]))
print(f"{'class':8} {'images':>6} {'pixels kept':>11} {'cell pixels kept':>16} {'images < 10%':>12}")
for name in split["class_names"]:
    r = np.array(rows[name])
    print(f"{name:8} {len(r):6d} {np.median(r[:, 0]):11.3f} {np.median(r[:, 1]):16.3f} {int((r[:, 1] < 0.1).sum()):12d}")
print(f"{'class':8} {'images':>6} {'kept colour (segmented)':>24} {'same pixels (original)':>23} {'channel corr R / G / B':>23} {'affine R² R / G / B':>20}")
for name in split["class_names"]:
    c = np.median(np.array(colours[name]), 0)
    print(f"{name:8} {len(colours[name]):6d} {'%.0f / %.0f / %.0f' % tuple(c[:3]):>24} {'%.0f / %.0f / %.0f' % tuple(c[3:6]):>23} "
          f"{'%.2f / %.2f / %.2f' % tuple(c[6:9]):>23} {'%.2f / %.2f / %.2f' % tuple(c[9:]):>20}")
