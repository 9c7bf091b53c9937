"""Per-class validation accuracy of a v2 model and of its run's ANN teacher under global exposure gains
(`robustness`'s illumination distortion: scaled, rounded, clipped at 255), both behind the model's
front end (research):

    python research/gain_probe.py MODEL.net RUN_DIR 1.0,1.3,1.4,0.7

RUN_DIR holds the run's teacher.pt. Validation split of models/neurallnet-aria.split.json only.
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

model_path, run_dir, gains = sys.argv[1], sys.argv[2], [float(g) for g in sys.argv[3].split(",")]
torch.set_num_threads(2)
model = lava_allnet.load(model_path)
classes = model.class_names
inputs = dataset_inputs(model.spec, "../shared/data/all-aria/original", "models/neurallnet-aria.split.json", "val")
y = np.asarray(inputs.labels)
teacher_path = f"{run_dir}/teacher.pt"
teacher = load_teacher(teacher_path, ModelConfig.from_dict(load_torch(teacher_path)["config"]))


def per_class(p: np.ndarray) -> str:
    return " ".join(f"{n[:5]} {np.mean(p[y == k] == k):.2f}" for k, n in enumerate(classes))


for g in gains:
    x = distort(inputs.images, "illumination", g)
    student = np.array([classes.index(r["prediction"]) for r in model.predict(x, backend="torch")])
    with torch.no_grad():
        ann = teacher(torch.from_numpy(model.spec.frontend.apply(x))).argmax(1).numpy()
    print(f"gain {g}: student {np.mean(student == y):.3f} [{per_class(student)}] | "
          f"teacher {np.mean(ann == y):.3f} [{per_class(ann)}]", flush=True)
