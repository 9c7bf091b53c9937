"""Compare two backends value for value (``verify``).

:class:`ValueComparison` takes, image by image, every stage's messages at every window step from
a reference and a candidate backend (arrays of shape (T, neurons), Lava's (W, H, C) order
flattened: spikes 0/1, graded messages their integer values) and compares every value. It holds
one image at a time, so memory does not grow with the number of images.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np


class ValueComparison:
    """Every neuron's message at every step of every image, per stage; the first difference kept."""

    def __init__(self, stages: Mapping[str, tuple[int, ...]], steps: int) -> None:
        self.shapes = dict(stages)  # stage → Lava shape (W, H, C) or (n,)
        self.steps = steps
        self.compared = {name: 0 for name in self.shapes}
        self.differing = {name: 0 for name in self.shapes}
        self.messages = {name: [0, 0] for name in self.shapes}  # non-zero messages: reference, candidate
        self.first: dict[str, dict] = {}
        self.missing: set[str] = set()
        self.n_images = 0

    def add(self, image: int, reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray]) -> None:
        """One image: stage → (T, neurons) values of each backend."""
        self.n_images += 1
        for name, shape in self.shapes.items():
            a, b = reference.get(name), candidate.get(name)
            if a is None or b is None:
                self.missing.add(name)
                continue
            a = np.asarray(a).reshape(self.steps, -1)
            b = np.asarray(b).reshape(self.steps, -1)
            if a.shape != b.shape:
                self.missing.add(name)
                continue
            diff = a.astype(np.float64) != b.astype(np.float64)  # exact: integers up to 2**53
            self.compared[name] += a.size
            self.messages[name][0] += int(np.count_nonzero(a))
            self.messages[name][1] += int(np.count_nonzero(b))
            k = int(np.count_nonzero(diff))
            if k:
                self.differing[name] += k
                if name not in self.first:
                    step, neuron = (int(v) for v in np.argwhere(diff)[0])
                    self.first[name] = {
                        "image": image, "step": step, "neuron": neuron,
                        "index": [int(v) for v in np.unravel_index(neuron, shape)],
                        "reference": _scalar(a[step, neuron]), "candidate": _scalar(b[step, neuron]),
                    }

    @property
    def identical(self) -> bool:
        return not self.missing and not any(self.differing.values()) and self.n_images > 0

    def first_difference(self) -> dict | None:
        """The first differing value in graph order (the stage where a difference starts)."""
        for name in self.shapes:
            if name in self.first:
                return {"layer": name, **self.first[name]}
        return None

    def report(self) -> dict:
        return {
            "n_images": self.n_images,
            "identical": self.identical,
            "first_difference": self.first_difference(),
            "layers": [
                {
                    "layer": name,
                    "shape": list(shape),
                    "neurons": int(np.prod(shape)),
                    "values_compared": self.compared[name],
                    "values_differing": self.differing[name],
                    "reference_messages": self.messages[name][0],
                    "candidate_messages": self.messages[name][1],
                    "equal": name not in self.missing and not self.differing[name],
                    "missing": name in self.missing,
                    "first_difference": self.first.get(name),
                }
                for name, shape in self.shapes.items()
            ],
        }


def _scalar(v) -> int | float:
    f = float(v)
    return int(f) if f.is_integer() else f
