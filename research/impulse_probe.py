"""Validation accuracy of a model under `robustness`'s distortions with a switching 3x3 median
applied before its front end (research; the probe behind the twenty-second amendment):

    python research/impulse_probe.py MODEL.net 256,90,60,40

For each threshold T (256: off), a pixel whose value in a channel differs from the median of its
3x3 neighbourhood in that channel (edges replicated) by more than T is replaced by that median:
a camera's dead- and hot-pixel correction, which removes salt-and-pepper noise and leaves almost
every pixel of a clean image as it is. The model is not retrained. Distortions drawn as
`evaluation.distort` does, image i seeded by (0, i) in validation order (`robustness` draws per
chunk of its own file order, so its figures differ by a few images).
"""
import sys

import numpy as np
import torch

import lava_allnet
from lava_allnet.api import dataset_inputs
from lava_allnet.evaluation import distort
from lava_allnet.frontend import FrontEnd

torch.set_num_threads(2)
model = lava_allnet.load(sys.argv[1])
classes = model.class_names
inputs = dataset_inputs(model.spec, "../shared/data/all-aria/original", "models/neurallnet-aria.split.json", "val")
y = np.asarray(inputs.labels)


conditions = [("clean", None), ("illumination", 1.3), ("gaussian_noise", 16.0), ("salt_pepper", 0.01),
              ("salt_pepper", 0.03), ("salt_pepper", 0.08), ("gaussian_blur", 1.6), ("occlusion", 0.2)]
for t in [int(v) for v in sys.argv[2].split(",")]:
    res = []
    for kind, sev in conditions:
        x = inputs.images if kind == "clean" else distort(inputs.images, kind, sev)
        xs = FrontEnd("none", impulse=t).correct_impulses(x) if t < 256 else x  # the product's correction
        if kind == "clean":
            res.append(f"clean pixels changed {np.mean(xs != x):.4f}")
        p = np.array([classes.index(r["prediction"]) for r in model.predict(xs, backend="torch")])
        res.append(f"{kind} {sev} {np.mean(p == y):.3f}")
    print(f"T={t}: " + "; ".join(res), flush=True)
