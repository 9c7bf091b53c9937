"""Where a graded student loses over-exposure: a run's ANN teacher put through graded messages
(training.graded.calibrate and forward: each ReLU output rounded to its message step and zeroed
below threshold x the layer's mean positive activation), with no fine-tuning, at each threshold
and exposure gain, per class, on the validation split (research):

    python research/threshold_probe.py MODEL.net RUN_DIR 0,0.5,1.0 1.0,1.3 [LAYERS]

Threshold 0 keeps the rounding only (the threshold is then half a step). A threshold written with
colons (``1:1:1:0.5:1``) gives one per hidden layer, conv1 first. LAYERS (e.g. ``1,2``,
counted from 1): the threshold applies to those hidden layers only, the others keep the rounding.
The quantiser is calibrated as a graded stage calibrates it: on 256 training images behind the
model's front end.
"""
import sys

import numpy as np
import torch

import lava_allnet
from lava_allnet.api import dataset_inputs
from lava_allnet.config import ModelConfig
from lava_allnet.evaluation import distort
from training.checkpoint import load_torch
from training.distill import load_teacher
from training.graded import calibrate, forward

model_path, run_dir = sys.argv[1], sys.argv[2]
thresholds = [[float(f) for f in v.split(":")] if ":" in v else float(v) for v in sys.argv[3].split(",")]
gains = [float(v) for v in sys.argv[4].split(",")]
layers = [int(v) for v in sys.argv[5].split(",")] if len(sys.argv) > 5 else None
torch.set_num_threads(1)
model = lava_allnet.load(model_path)
classes, fe = model.class_names, model.spec.frontend
split, root = "models/neurallnet-aria.split.json", "../shared/data/all-aria/original"
val = dataset_inputs(model.spec, root, split, "val")
train = dataset_inputs(model.spec, root, split, "train")
y = np.asarray(val.labels)
path = f"{run_dir}/teacher.pt"
teacher = load_teacher(path, ModelConfig.from_dict(load_torch(path)["config"])).eval()
pick = np.random.default_rng(0).permutation(len(train.labels))[:256]
calib = torch.from_numpy(fe.apply(train.images[pick]))
for t in thresholds:
    if isinstance(t, list):  # one threshold per hidden layer: layer k from a calibration at its own factor
        at = {f: calibrate(teacher, calib, f) for f in set(t)}  # one calibration per distinct factor
        quant = [at[f][k] for k, f in enumerate(t)]
    else:
        quant = calibrate(teacher, calib, t)
    if layers is not None:  # rounding only (half a step) outside the chosen layers
        quant = [(step, theta if k in layers else step / 2) for k, (step, theta) in enumerate(quant, start=1)]
    for g in gains:
        x = torch.from_numpy(fe.apply(distort(val.images, "illumination", g)))
        with torch.no_grad():
            logits, acts = forward(teacher, x, quant)
        p = logits.argmax(1).numpy()
        live = [float((a > 0).float().mean()) for a in acts]
        cls = " ".join(f"{n[:5]} {np.mean(p[y == k] == k):.2f}" for k, n in enumerate(classes))
        where = "" if layers is None else f" on layers {layers}"
        name = ":".join(map(str, t)) if isinstance(t, list) else t
        print(f"threshold {name}{where} gain {g}: {np.mean(p == y):.3f} [{cls}]  mean share of messages sent "
              f"(per layer) {np.mean(live):.3f} (" + " ".join(f"{v:.3f}" for v in live) + ")", flush=True)
