"""Validation accuracy of a model on cells on black: each validation image of `original/` with
everything but its stained white cells set to black (research; the proxy the twenty-fifth amendment
selects on, since `segmented/` is a test that nothing may be trained or selected on):

    python research/masked_val.py MODEL.net

The cells are `training.augment.cell_mask`'s (blue above green by 40 grey levels more than the
image's median pixel, grown by 2 pixels), the mask the `augment.background` replacement uses; the
dataset's `segmented/` copies were colour-thresholded by their authors, with a mask of their own.
Prints the accuracy (torch backend) and how many images each class was called.

Then the thirty-first amendment's ninth measure, recoloured cells on black: the same cells on black,
each image first given another colour rendering, drawn from a generator seeded 0 (the same images
for every model): each channel inverted (255 - x) with probability 0.5, then in half of the images
each channel a random convex mix of the three (the family `augment.background_recolour` draws in
training). `segmented/` recolours the cells it keeps (`research/segmented_content.py`); this
stand-in asks whether a model reads the cells in colours it was not shown them in.
"""
import sys

import numpy as np
import torch

import lava_allnet
from lava_allnet.api import dataset_inputs
from training.augment import _mix, cell_mask

torch.set_num_threads(2)
model = lava_allnet.load(sys.argv[1])
inputs = dataset_inputs(model.spec, "../shared/data/all-aria/original", "models/neurallnet-aria.split.json", "val")
y = np.asarray(inputs.labels)
keep = cell_mask(torch.from_numpy(np.ascontiguousarray(inputs.images))).numpy()
masked = np.where(keep, inputs.images, 0).astype(np.uint8)


def score(images: np.ndarray) -> tuple[float, str]:
    pred = np.array([model.class_names.index(r["prediction"]) for r in model.predict(images, backend="torch")])
    calls = ", ".join(f"{c} {n}" for c, n in zip(model.class_names, np.bincount(pred, minlength=len(model.class_names))))
    return float(np.mean(pred == y)), calls


acc, calls = score(masked)
print(f"cells on black (validation, {len(y)} images, median {np.median(keep.mean((1, 2, 3))):.1%} of pixels kept): "
      f"accuracy {acc:.3f}; called {calls}")


def recolour(images: np.ndarray, seed: int = 0) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    u = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731
    f = torch.from_numpy(np.ascontiguousarray(images)).float()
    n = f.shape[0]
    u(n, 1, 1, 1)  # the per-image "render?" draw (probability 1 here): kept so the images stay the measured ones
    flip = u(n, 3, 1, 1) < 0.5
    f = torch.where(flip, 255 - f, f)
    f = _mix(f, u(n) < 0.5, u)  # the training draws' channel mix
    return f.round().clamp(0, 255).to(torch.uint8).numpy()


recoloured = np.where(keep, recolour(inputs.images), 0).astype(np.uint8)
acc, calls = score(recoloured)
print(f"recoloured cells on black (validation, {len(y)} images): accuracy {acc:.3f}; called {calls}")
