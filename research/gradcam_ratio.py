"""Grad-CAM heat on the stained nuclei over the heat elsewhere (the model card's figure): for the
first 2 images of each class of ../shared/data/all-aria/original (as tests/test_evaluation.py
picks them), the mean heat at the default layer on the darkest fifth of the pixels over the mean
heat on the rest; prints each ratio and the median.

    python research/gradcam_ratio.py MODEL.net
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from lava_allnet import evaluation as ev
from lava_allnet.data.images import load_image
from netx import format as nf
from netx.export import network_from_spec

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "all-aria" / "original"


def main() -> None:
    spec = nf.read(sys.argv[1])
    net = network_from_spec(spec)
    paths = [p for c in sorted(d for d in DATA.iterdir() if d.is_dir()) for p in sorted(c.glob("*.jp*g"))[:2]]
    ratios = []
    for path in paths:
        img = load_image(path, spec.input.shape[1])
        res = ev.grad_cam(net, img)
        grey = img.mean(0)
        cells = grey < np.percentile(grey, 20)
        ratios.append(float(res["cam"][cells].mean() / max(res["cam"][~cells].mean(), 1e-6)))
    print({"layer": res["layer"], "ratios": [round(r, 2) for r in ratios], "median": round(float(np.median(ratios)), 2)})


if __name__ == "__main__":
    main()
