"""Synthetic smear rendering speed (was a timed test): ms per 224x224 field, per class.

Prints the mean over 3 fields per class after one warm-up render. Per-pixel Python loops would
show as ~100x slower (measured ~10 ms/image on one core when this was a test).
"""
from __future__ import annotations

import time

import numpy as np

from lava_allnet.data.synth import CLASS_NAMES, render_field


def main() -> None:
    rng = np.random.default_rng(0)
    render_field(rng, "Pro", 224)
    for c in CLASS_NAMES:
        t0 = time.perf_counter()
        for _ in range(3):
            render_field(rng, c, 224)
        print(f"{c:7s} {1000 * (time.perf_counter() - t0) / 3:7.1f} ms/field")


if __name__ == "__main__":
    main()
