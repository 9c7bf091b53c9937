"""A spiking NeurALLNet initialised from its ANN teacher (v2 exploration; no recipe uses it).

The v2 student does not fit the augmented task from scratch on this CPU (models/README.md, v2),
while the ANN teacher of the same shape does (validation 0.934). This starts the student from the
teacher's features: each conv's weights are the teacher's with its batch norm's scale folded in
(gamma / sqrt(var + eps) per output channel; the student's mean-only batch norm takes the shift),
the output layer repeats the teacher's head row of each class over its population, and the rate
calibration the trainer uses for a fresh network then scales each layer to fire at ~10%. The SE
gates keep their fresh initialisation. Writes a best.pt-style checkpoint for ``schedule.init``.

    python research/ann_init.py --teacher runs/aria-v2/teacher.pt --config runs/aria-v2/1-distill/config.json \
        --out /tmp/ann_init.pt
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from lava_allnet.config import ModelConfig
from lava_allnet.frontend import FrontEnd
from lava_allnet.model import build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", type=Path, required=True)
    ap.add_argument("--config", type=Path, required=True, help="a run's config.json (model config, data root)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--images", type=int, default=32, help="training images for the rate calibration")
    a = ap.parse_args()
    doc = json.loads(a.config.read_text())
    cfg = ModelConfig.from_dict(doc["model"])
    teacher = torch.load(a.teacher, map_location="cpu", weights_only=False)["model"]
    torch.manual_seed(0)
    net = build_model(cfg)
    state = net.state_dict()
    convs = sorted({k.split(".")[1] for k in teacher if k.startswith("features.") and teacher[k].dim() == 4}, key=int)
    for i, idx in enumerate(convs, start=1):
        w = teacher[f"features.{idx}.weight"]
        bn = str(int(idx) + 1)
        scale = teacher[f"features.{bn}.weight"] / (teacher[f"features.{bn}.running_var"] + 1e-5).sqrt()
        key = f"blocks.conv{i}.synapse.weight"
        state[key] = (w * scale.view(-1, 1, 1, 1)).unsqueeze(-1).to(state[key].dtype)
    head = teacher["head.weight"].repeat_interleave(cfg.population, dim=0)
    state["blocks.fc.synapse.weight"] = head.view(*state["blocks.fc.synapse.weight"].shape)
    net.load_state_dict(state)

    # the rate calibration on training images, as the trainer does for a fresh network
    from lava_allnet.data import images as di

    root = Path(doc["data"]["root"])
    split = json.loads((a.config.parent / "split.json").read_text())
    paths = [root / p for p in split["train"][: a.images]]
    imgs = torch.from_numpy(di.load_images(paths, cfg.input_size).images)
    x = FrontEnd.from_json(cfg.frontend).apply_torch(imgs)
    rates = net.calibrate(net.encode(x))
    print("initial spike rates: " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items()))
    torch.save({"model": net.state_dict(), "config": cfg.to_dict(), "epoch": 0}, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
