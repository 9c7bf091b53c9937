"""Peak memory of `lava-allnet run` against the number of images, measured in one run.

Generates synthetic smears (128x128 PNG, `lava_allnet.data.synth`, seeded) into a temporary
folder, then runs the shipped model on a small and a large folder, each in a fresh process
(`run DIR --backend B --out results.csv`), and reads the process's peak resident size
(`ru_maxrss` of the finished child). Prints both peaks and the growth; the target (issue 36) is
growth <= 200 MB for 100 against 10,000 images on torch and 100 against 2,000 on the simulator.

    python benchmarks/bench_memory.py [--torch 100 10000] [--sim 100 2000] [--skip-sim]
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EXE = str(Path(sys.executable).parent / "lava-allnet")


def make_folder(root: Path, n: int, seed: int = 0) -> Path:
    """n smears, about n/4 per class, written once (seeded: the same files for every n)."""
    import numpy as np
    from PIL import Image

    from lava_allnet.data import synth

    folder = root / f"n{n}"
    for i in range(n):
        cls = synth.CLASS_NAMES[i % 4]
        (folder / cls).mkdir(parents=True, exist_ok=True)
        img = synth.render_field(synth.image_rng(seed, i % 4, i), cls, 128)
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(folder / cls / f"{cls}_{i:06d}.png")
    return folder


def peak_rss_mb(args: list[str]) -> tuple[float, float, int]:
    """(peak RSS in MB, seconds, results written) of one fresh `lava-allnet` process (wait4 gives
    that child's own ru_maxrss)."""
    tmp = Path(tempfile.mkdtemp())
    out = tmp / "results.csv"
    t0 = time.perf_counter()
    with open(tmp / "stdout", "w") as so, open(tmp / "stderr", "w") as se:
        proc = subprocess.Popen([EXE, *args, "--out", str(out)], stdout=so, stderr=se)
        _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"lava-allnet {' '.join(args)} failed: {(tmp / 'stderr').read_text().strip()[-500:]}")
    return usage.ru_maxrss / 1024, dt, sum(1 for _ in open(out)) - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--torch", type=int, nargs=2, default=(100, 10_000), metavar=("SMALL", "LARGE"))
    ap.add_argument("--sim", type=int, nargs=2, default=(100, 2_000), metavar=("SMALL", "LARGE"))
    ap.add_argument("--skip-sim", action="store_true")
    ap.add_argument("--keep", type=Path, default=None, help="generate the images here and keep them")
    args = ap.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-memory-"))
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sizes = sorted({*args.torch, *([] if args.skip_sim else args.sim)})
    folders = {n: (root / f"n{n}") if (root / f"n{n}").is_dir() else make_folder(root, n) for n in sizes}
    print(f"generated {', '.join(map(str, sizes))} smears in {time.perf_counter() - t0:.0f} s ({root})", flush=True)
    rows = []
    for backend, (small, large) in [("torch", args.torch)] + ([] if args.skip_sim else [("sim", args.sim)]):
        for n in (small, large):
            mb, dt, k = peak_rss_mb(["run", str(folders[n]), "--backend", backend])
            rows.append((backend, n, mb, dt, k))
            print(f"{backend:5s} {n:6d} images: peak RSS {mb:8.1f} MB, {dt:7.1f} s, {k} results", flush=True)
    print()
    for backend, (small, large) in [("torch", args.torch)] + ([] if args.skip_sim else [("sim", args.sim)]):
        a = next(r for r in rows if r[:2] == (backend, small))
        b = next(r for r in rows if r[:2] == (backend, large))
        growth = b[2] - a[2]
        print(f"{backend}: {small} -> {large} images: peak RSS {a[2]:.0f} -> {b[2]:.0f} MB, growth {growth:+.0f} MB "
              f"({'within' if growth <= 200 else 'OVER'} the 200 MB target), {1000 * growth / (large - small):.3f} MB "
              f"per 1,000 images")
    if os.environ.get("KEEP") is None and args.keep is None:
        subprocess.run(["rm", "-rf", str(root)])


if __name__ == "__main__":
    main()
