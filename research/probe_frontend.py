"""ANN probe: which input front end and augmentation keep a model of NeurALLNet's shape accurate
under exposure changes, colour equalisation and the segmented background (validation images only).

Trains the distillation teacher's ANN (training/distill.Teacher: the SNN's conv stack with batch
norm and ReLU) on the shipped split's training images through a front end and augmentation, then
scores the validation images: clean, illumination gain 0.5 / 0.7 / 1.3 (clipped), colour-equalised
per image (Reinhard in RGB to the training average), and the same images from ``segmented/``.
Test images are never read.

    python research/probe_frontend.py --frontend anchor --augment robust --epochs 8

``--frontend dark-reinhard`` (research only, not a product front end): Reinhard's per-channel mean and
std equalisation taken over each channel's darkest ``--dark`` percent of pixels (the cells, which do
not clip until far brighter exposures than the background), then, with ``--clip``, every output
above a fixed ceiling set to it: the level the camera's 255 reaches in the normalised image at gain
``--clip`` (the 10th percentile over the training images), so the clipped background looks alike at
every gain up to that one. ``--frontend reinhard-exact``: Reinhard without the offset bound of ±256
grey levels, in floating point (``saturation_probe.Variant("reinhard")``, the probe behind the
model card's runs 21 onwards; the product's integer form is ``frontend.offset_bound = 16640``), so
a channel that clipped flat lands on the reference mean, not near white. ``--augment v2`` is the
v2 recipe's augmentation.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lava_allnet.config import get_model_config
from lava_allnet.data import images as di
from lava_allnet.frontend import FrontEnd
from saturation_probe import Variant
from training import augment
from training.distill import Teacher

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "all-aria"
AUGMENTS = {
    "flips": augment.Photometric(),
    "robust": augment.Photometric(gain=(0.5, 1.4), gamma=(0.8, 1.25), contrast=0.2, stain=0.1, hue=0.3, noise=10.0,
                                  blur=1.2, occlusion=0.15, background=0.5),
    "exposure-bg": augment.Photometric(gain=(0.5, 1.4), background=0.5),
    "exposure": augment.Photometric(gain=(0.5, 1.4)),
    "v2": augment.Photometric(gain=(0.5, 1.4), contrast=0.1, stain=0.05, noise=8.0, blur=1.0, occlusion=0.15),
    "robust-nohue": augment.Photometric(gain=(0.5, 1.4), gamma=(0.8, 1.25), contrast=0.2, stain=0.1, noise=10.0,
                                        blur=1.2, occlusion=0.15, background=0.5),
}


class DarkReinhard:
    """The research front end of ``--frontend dark-reinhard`` (module doc); numpy, float, not integer-exact."""

    def __init__(self, dark: float = 20.0, clip_gain: float = 0.0) -> None:
        self.dark, self.clip_gain = dark, clip_gain
        self.ref = np.zeros(6)
        self.ceiling = np.full(3, 255.0)

    def _stats(self, x: np.ndarray) -> np.ndarray:
        v = np.sort(x.reshape(len(x), x.shape[1], -1).astype(np.float64), axis=-1)
        v = v[..., : max(2, int(v.shape[-1] * self.dark / 100))]
        return np.concatenate([v.mean(-1), np.maximum(v.std(-1), 1.0)], axis=1)

    def fit(self, x: np.ndarray) -> "DarkReinhard":
        st = self._stats(x)
        self.ref = st.mean(0)
        if self.clip_gain:
            rm, rs = self.ref[:3], self.ref[3:]
            top = (255.0 / self.clip_gain - st[:, :3]) * rs / st[:, 3:] + rm  # where 255 lands at that gain
            self.ceiling = np.percentile(top, 10, axis=0)
        return self

    def apply(self, x: np.ndarray) -> np.ndarray:
        st = self._stats(x)
        rm, rs = self.ref[:3], self.ref[3:]
        y = (x.astype(np.float64) - st[:, :3, None, None]) * (rs / st[:, 3:])[:, :, None, None] + rm[None, :, None, None]
        y = np.minimum(y, self.ceiling[None, :, None, None])
        return np.clip(np.round(y), 0, 255).astype(np.uint8)


class Median:
    """``--median K``: a K x K median filter per channel (edges repeated), then the front end ``fe``."""

    def __init__(self, k: int, fe=None) -> None:
        self.k, self.fe = k, fe

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.k:
            from scipy.ndimage import median_filter

            x = median_filter(x, size=(1, 1, self.k, self.k), mode="nearest")
        return self.fe.apply(x) if self.fe is not None else x


def load(folder: str, idx, ds_paths, size=128):
    paths = [Path(str(ds_paths[i]).replace("/original/", f"/{folder}/")) for i in idx]
    return torch.from_numpy(di.load_images(paths, size).images)


@torch.no_grad()
def accuracy(net, fe: FrontEnd, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    xs = torch.from_numpy(fe.apply(x.numpy()))
    pred = torch.cat([net(xs[i:i + 64]).argmax(1) for i in range(0, len(xs), 64)])
    return float((pred == y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frontend", default="anchor")
    ap.add_argument("--augment", default="robust", choices=sorted(AUGMENTS))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dark", type=float, default=20.0, help="dark-reinhard: the darkest percent of pixels it measures")
    ap.add_argument("--median", type=int, default=0, help="a median filter of this side before the front end "
                                                               "(as the product's frontend.median at 13df811; 0: none)")
    ap.add_argument("--clip", type=float, default=0.0, help="dark-reinhard: the gain whose clipping it imitates (0: none)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ds = di.scan_image_folder(DATA / "original")
    split = di.load_split(ROOT / "models" / "neurallnet-aria.split.json", ds)
    xtr, xva = load("original", split["train"], ds.paths), load("original", split["val"], ds.paths)
    ytr, yva = torch.as_tensor(ds.labels[split["train"]]), torch.as_tensor(ds.labels[split["val"]])
    xseg = load("segmented", split["val"], ds.paths)
    fit_on = Median(args.median).apply(xtr.numpy())
    if args.frontend == "reinhard-exact":
        fe = Variant("reinhard", fit_on)
    else:
        fe = (DarkReinhard(args.dark, args.clip) if args.frontend == "dark-reinhard" else FrontEnd(args.frontend)).fit(fit_on)
    if args.median:
        fe = Median(args.median, fe)
    equaliser = FrontEnd("reinhard").fit(xtr.numpy())
    cfg = get_model_config("neurallnet")
    torch.manual_seed(args.seed)
    net = Teacher(cfg).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=1e-4)
    bs, steps = 32, (len(xtr) + 31) // 32
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=args.epochs * steps)
    photo = AUGMENTS[args.augment]
    t0 = time.time()
    for epoch in range(args.epochs):
        net.train()
        g = torch.Generator().manual_seed(args.seed * 1000 + epoch)
        perm = torch.randperm(len(xtr), generator=g)
        for b in range(steps):
            idx = perm[b * bs:(b + 1) * bs]
            x = augment.augment_batch(xtr[idx], g, strength=0.0)
            if photo.active:
                x = photo(x, g)
            x = torch.from_numpy(fe.apply(x.numpy()))
            loss = F.cross_entropy(net(x), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    gain = lambda x, k: (x.float() * k).round().clamp(0, 255).to(torch.uint8)  # noqa: E731
    res = {
        "frontend": args.frontend + (f" dark {args.dark:g} clip {args.clip:g}" if args.frontend == "dark-reinhard" else "")
        + (f" median {args.median}" if args.median else ""),
        "augment": args.augment, "epochs": args.epochs, "seconds": round(time.time() - t0),
        "val_clean": accuracy(net, fe, xva, yva),
        **{f"val_gain_{k}": accuracy(net, fe, gain(xva, k), yva) for k in (0.5, 0.7, 1.3, 1.4)},
        "val_equalised": accuracy(net, fe, torch.from_numpy(equaliser.apply(xva.numpy())), yva),
        "val_segmented": accuracy(net, fe, xseg, yva),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in res.items()}))


if __name__ == "__main__":
    main()
