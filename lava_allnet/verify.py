"""Compare two backends' Runs stage by stage (``verify`` = two backends, compare Results)."""
from __future__ import annotations

import numpy as np

from lava_allnet.result import Run


def compare_runs(reference: Run, candidate: Run) -> dict:
    """Equality of every stage's message count at every window step of every image."""
    layers = []
    for name in reference.stage_names:
        a = reference.stage_steps[name]
        b = candidate.stage_steps.get(name)
        equal = b is not None and a.shape == b.shape and bool(np.array_equal(a, b))
        first = None
        if b is not None and a.shape == b.shape and not equal:
            n, t = np.argwhere(a != b)[0]
            first = {"image": int(n), "step": int(t), "reference": int(a[n, t]), "candidate": int(b[n, t])}
        layers.append({
            "layer": name,
            "reference": int(a.sum()),
            "candidate": None if b is None else int(b.sum()),
            "equal": equal,
            "first_difference": first,
        })
    outputs_equal = bool(np.array_equal(reference.output_neurons, candidate.output_neurons))
    preds_equal = [r.prediction for r in reference.results] == [r.prediction for r in candidate.results]
    missing = [n for n in candidate.stage_names if n not in reference.stage_steps]
    identical = all(l["equal"] for l in layers) and outputs_equal and preds_equal and not missing
    return {
        "reference": reference.backend,
        "candidate": candidate.backend,
        "n_images": len(reference.results),
        "identical": identical,
        "predictions_equal": preds_equal,
        "output_neurons_equal": outputs_equal,
        "overflow": reference.overflow,
        "layers": layers,
        "predictions": [
            {"path": r.path, "reference": r.prediction, "candidate": c.prediction}
            for r, c in zip(reference.results, candidate.results)
        ],
    }
