"""Grad-CAM heat on the stained nuclei over the heat elsewhere (the model card's figure): per image,
the mean heat at the default layer on the darkest fifth of the pixels over the mean heat on the
rest; prints each ratio and the median.

    python research/gradcam_ratio.py MODEL.net              # the issue's 8 images
    python research/gradcam_ratio.py MODEL.net --subset test [--split SPLIT.json]

Without ``--subset``: the first 2 images of each class of ../shared/data/all-aria/original (as
tests/test_evaluation.py picks them; the v2 issue's "median of 8"). Of those 8, 5 are training
images of the shipped split, 1 validation and 2 test. With ``--subset test``: the first 2 test
images of each class (sorted by path; the issue's count, on the test split) and the median and
quartiles over every test image of the split.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from lava_allnet import evaluation as ev
from lava_allnet.data.images import load_image
from netx import format as nf
from netx.export import network_from_spec

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "all-aria" / "original"


def heat_ratio(cam: np.ndarray, img: np.ndarray) -> float:
    """The mean heat of ``cam`` (H, W) on the darkest fifth of ``img``'s (3, H, W) pixels over the rest."""
    grey = img.mean(0)
    cells = grey < np.percentile(grey, 20)
    return float(cam[cells].mean() / max(cam[~cells].mean(), 1e-6))


def ratio(net, spec, path: Path) -> tuple[float, str]:
    img = load_image(path, spec.input.shape[1])
    res = ev.grad_cam(net, img)
    return heat_ratio(res["cam"], img), res["layer"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--subset", choices=["test", "val"], help="the split's subset (default: the issue's 8 images)")
    ap.add_argument("--split", default=str(ROOT / "models" / "neurallnet-aria.split.json"))
    args = ap.parse_args()
    spec = nf.read(args.model)
    net = network_from_spec(spec)
    if args.subset is None:
        paths = [p for c in sorted(d for d in DATA.iterdir() if d.is_dir()) for p in sorted(c.glob("*.jp*g"))[:2]]
        ratios = [ratio(net, spec, p) for p in paths]
        print({"layer": ratios[-1][1], "ratios": [round(r, 2) for r, _ in ratios],
               "median": round(float(np.median([r for r, _ in ratios])), 2)})
        return
    split = json.loads(Path(args.split).read_text())
    root = (ROOT / split["root"]).resolve()  # relative to the project root, or absolute
    paths = sorted(split[args.subset])
    ratios = {p: ratio(net, spec, root / p)[0] for p in paths}
    eight = [p for c in split["class_names"] for p in [q for q in paths if q.split("/")[0] == c][:2]]
    all_r = np.array(list(ratios.values()))
    print(json.dumps({
        "subset": args.subset, "images": len(paths),
        "eight": {p: round(ratios[p], 2) for p in eight},
        "median_of_eight": round(float(np.median([ratios[p] for p in eight])), 2),
        "median_all": round(float(np.median(all_r)), 2),
        "quartiles_all": [round(float(q), 2) for q in np.percentile(all_r, [25, 75])],
        "share_above_1_5": round(float((all_r >= 1.5).mean()), 3),
    }))


if __name__ == "__main__":
    main()
