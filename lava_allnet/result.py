"""The one Result type every backend produces, and the run that holds them."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass
class Result:
    """One image through one backend."""

    path: str
    prediction: str
    predicted_index: int
    class_counts: dict[str, int]  # output spikes per class (population sum)
    layer_counts: dict[str, int]  # messages (spikes or graded) per stage over the window
    label: str | None = None  # true class, when the image sits in a class folder
    # from the model's calibration (lava_allnet.calibration); None for a model without one
    probabilities: dict[str, float] | None = None
    confidence: float | None = None
    abstain: bool | None = None
    out_of_distribution: bool | None = None
    ood_score: float | None = None

    @property
    def correct(self) -> bool | None:
        return None if self.label is None else self.label == self.prediction

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["correct"] = self.correct
        return d


@dataclass
class Run:
    """A backend's results for many images plus what it measured."""

    backend: str
    results: list[Result]
    stage_steps: dict[str, np.ndarray]  # stage → (N, T) messages per window step
    output_neurons: np.ndarray  # (N, n_out)
    timing: dict[str, float] = field(default_factory=dict)
    stage_weighted: dict[str, np.ndarray] = field(default_factory=dict)  # stage → (N, T)
    stage_active: dict[str, np.ndarray] = field(default_factory=dict)  # stage → (N,) active neurons
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    overflow: int = 0  # torch only: 24-bit range violations (0 for a deployable model)

    @property
    def stage_names(self) -> list[str]:
        return list(self.stage_steps)

    def accuracy(self) -> float | None:
        labelled = [r for r in self.results if r.label is not None]
        if not labelled:
            return None
        return sum(bool(r.correct) for r in labelled) / len(labelled)


def make_results(
    paths: list[str],
    class_names: tuple[str, ...],
    population: int,
    stage_steps: dict[str, np.ndarray],
    output_neurons: np.ndarray,
    labels: list[int | None] | None = None,
    calibration=None,
    features: np.ndarray | None = None,
) -> list[Result]:
    """Assemble Results from per-stage counts; identical for every backend. With a
    :class:`~lava_allnet.calibration.Calibration` and the images' OOD ``features``, each Result
    also carries probabilities, confidence, abstain and the out-of-distribution warning."""
    k = len(class_names)
    class_counts = output_neurons.reshape(len(paths), k, population).sum(-1)
    pred = np.argmax(class_counts, axis=1)  # ties → lowest index, as in the torch model
    a = None if calibration is None else calibration.assess(class_counts, features)
    out = []
    for i, p in enumerate(paths):
        extra = {} if a is None else {
            "probabilities": {c: float(a["probabilities"][i, j]) for j, c in enumerate(class_names)},
            "confidence": float(a["confidence"][i]), "abstain": bool(a["abstain"][i]),
            "out_of_distribution": bool(a["out_of_distribution"][i]), "ood_score": float(a["ood_score"][i])}
        lab = None if labels is None or labels[i] is None else class_names[int(labels[i])]
        out.append(
            Result(
                path=str(p),
                prediction=class_names[int(pred[i])],
                predicted_index=int(pred[i]),
                class_counts={c: int(class_counts[i, j]) for j, c in enumerate(class_names)},
                layer_counts={name: int(v[i].sum()) for name, v in stage_steps.items()},
                label=lab,
                **extra,
            )
        )
    return out
