"""Write colour-equalised copies of a split's images (per image Reinhard in RGB: each channel's
mean and std set to the training images' average) into a folder OUTSIDE the repository, for
`lava-allnet evaluate MODEL OUT` (the folder holds that subset only, in class folders; file names
kept, content lossless PNG).

    python research/equalise.py ../shared/data/all-aria/original /tmp/equalised [--subset test]

The reference statistics come from the split's training images. Never commit the output.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

from lava_allnet.data import images as di
from lava_allnet.frontend import FrontEnd

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("data", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--split", type=Path, default=ROOT / "models" / "neurallnet-aria.split.json")
    ap.add_argument("--subset", default="test")
    ap.add_argument("--size", type=int, default=224)
    args = ap.parse_args()
    if args.out.resolve().is_relative_to(ROOT):
        raise SystemExit(f"{args.out}: write outside the repository")
    ds = di.scan_image_folder(args.data)
    split = di.load_split(args.split, ds)
    train = di.load_images([ds.paths[i] for i in split["train"]], args.size).images
    fe = FrontEnd("reinhard").fit(train)
    idx = split[args.subset]
    imgs = di.load_images([ds.paths[i] for i in idx], args.size).images
    out = fe.apply(imgs)
    for i, img in zip(idx, out):
        rel = Path(ds.paths[i]).relative_to(args.data)
        dest = args.out / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0))).save(dest, format="PNG")
    print(f"wrote {len(idx)} images to {args.out}")


if __name__ == "__main__":
    main()
