"""Training throughput, one process against data-parallel ranks (`train --nproc`), measured in one run.

Trains the demo model (96 px, T = 8, batch 16) on the same synthetic smears, in a fresh run directory
each, as
    1 process  x 2 threads   (schedule.threads = 2)
    2 processes x 1 thread   (--nproc 2: each rank takes its share of schedule.threads)
and reads the epoch times from the run's metrics.json. Images/s = training images / epoch seconds
(validation included: the ranks split it too), over the epochs after the first (warm-up). The final
weights of the two runs are compared as well: they must be the same training (DDP's equivalence).
With --cuda N (a GPU machine), adds 1 against N GPUs (--device cuda --nproc N).

    python benchmarks/bench_ddp.py [--per-class 60] [--epochs 3] [--cuda N]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = str(Path(sys.executable).parent / "lava-allnet")

RECIPE = """
name = "bench-ddp"
[data]
root = "synthetic"
synthetic_per_class = {per_class}
val_fraction = 0.2
[model]
name = "neurallnet-demo"
[schedule]
epochs = {epochs}
batch_size = 16
lr = 1e-2
seed = 0
threads = {threads}
"""


def train(root: Path, name: str, per_class: int, epochs: int, threads: int, nproc: int, device: str = "cpu") -> dict:
    recipe = root / f"{name}.toml"
    recipe.write_text(RECIPE.format(per_class=per_class, epochs=epochs, threads=threads))
    run = root / name
    env = dict(os.environ, OMP_NUM_THREADS=str(max(1, threads // nproc)))
    args = [EXE, "train", "--recipe", str(recipe), "--out", str(run), "--nproc", str(nproc), "--device", device]
    t0 = time.perf_counter()
    r = subprocess.run(args, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"{name}: {r.stderr.strip().splitlines()[-1]}")
    m = json.loads((run / "1-train" / "metrics.json").read_text())
    n_train = m["split_sizes"]["train"]
    secs = [h["seconds"] for h in m["history"][1:]] or [m["history"][0]["seconds"]]
    return {"name": name, "images_per_s": n_train * len(secs) / sum(secs), "epoch_s": sum(secs) / len(secs),
            "wall_s": wall, "val_accuracy": m["history"][-1]["val_accuracy"], "run": run}


def max_weight_diff(a: Path, b: Path) -> float:
    import torch

    sa = torch.load(a / "1-train" / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    sb = torch.load(b / "1-train" / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--per-class", type=int, default=60)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--cuda", type=int, default=0, help="also compare 1 GPU with this many (a GPU machine)")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = [train(root, "1proc-2threads", a.per_class, a.epochs, 2, 1),
                train(root, "2proc-1thread", a.per_class, a.epochs, 2, 2)]
        if a.cuda:
            rows += [train(root, "1gpu", a.per_class, a.epochs, 0, 1, "cuda"),
                     train(root, f"{a.cuda}gpu", a.per_class, a.epochs, 0, a.cuda, "cuda")]
        print(f"demo model, 96 px, T = 8, global batch 16, {4 * a.per_class} synthetic smears, {a.epochs} epochs "
              f"(images/s over epochs 2+; {os.cpu_count()} cores)")
        for r in rows:
            print(f"  {r['name']:>16}: {r['images_per_s']:7.1f} images/s  ({r['epoch_s']:.2f} s/epoch, "
                  f"{r['wall_s']:.1f} s in all, val acc {r['val_accuracy']:.3f})")
        base = rows[0]["images_per_s"]
        print(f"  2 processes x 1 thread / 1 process x 2 threads: {rows[1]['images_per_s'] / base:.2f}x")
        print(f"  max |weight difference| between them after {a.epochs} epochs: "
              f"{max_weight_diff(rows[0]['run'], rows[1]['run']):.2e}")
        if a.cuda:
            print(f"  {a.cuda} GPUs / 1 GPU: {rows[3]['images_per_s'] / rows[2]['images_per_s']:.2f}x")


if __name__ == "__main__":
    main()
