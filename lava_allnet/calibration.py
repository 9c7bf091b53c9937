"""From output spike counts to what a clinician reads: probabilities, confidence, abstention, and
an out-of-distribution warning.

- **Probabilities**: ``softmax(class_counts / temperature)``, the temperature fitted on validation
  images (minimum negative log-likelihood, Guo et al. 2017). Counts are integers, so the
  probabilities of an image are the same on every backend.
- **Confidence** is the top probability; an image **abstains** (is referred to a human) when its
  confidence is below ``abstain_below``, the lowest threshold at which the accepted validation
  images reach ``target_accuracy``.
- **Out of distribution**: ``ood_score`` is the Mahalanobis distance of the image's colour
  statistics, taken on what the network receives (after the model's front end), from those of the
  training images (Ledoit-Wolf covariance). No spatial information and no extra network pass: it
  costs a few percentiles per image. An image is ``out_of_distribution`` above ``ood_threshold``,
  a high quantile of the validation images' scores. A segmented smear (black background), a
  synthetic field or a lamp the model never saw moves these statistics far.

Stored in the model file (``netx.format``, root attribute ``calibration``, format version 3); written
by ``lava-allnet calibrate``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

PERCENTILES = (1, 10, 50, 90, 99)
DARK, BRIGHT = 16, 250  # share of near-black and near-saturated pixels
FEATURES = tuple(
    [f"{s}_{c}" for s in ("mean", "std", *[f"p{q}" for q in PERCENTILES]) for c in "RGB"] + ["dark_share", "bright_share"]
)


def ood_features(images: np.ndarray) -> np.ndarray:
    """(N, 3, H, W) uint8, as the network receives them (after the front end) → (N, 23) float64:
    per channel mean, std and the 1/10/50/90/99th percentiles, then the share of near-black and of
    near-saturated pixels."""
    x = np.asarray(images).reshape(len(images), images.shape[1], -1)
    xf = x.astype(np.float64)
    mean, std = xf.mean(-1), xf.std(-1)
    pct = np.percentile(x, PERCENTILES, axis=-1)  # (P, N, C)
    grey = x.max(1)
    dark = (grey < DARK).mean(-1, keepdims=True)
    bright = (x.min(1) >= BRIGHT).mean(-1, keepdims=True)
    return np.concatenate([mean, std, *pct, dark, bright], axis=1)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass
class Calibration:
    temperature: float
    abstain_below: float  # confidence threshold; 0: never abstain
    target_accuracy: float  # accuracy on the accepted validation images it was chosen for
    ood_center: list[float]
    ood_precision: list[list[float]]  # inverse covariance of the training images' features
    ood_threshold: float
    ood_quantile: float  # the validation quantile the threshold is
    fitted: dict[str, Any] = field(default_factory=dict)  # what it was fitted on, validation figures

    def __post_init__(self) -> None:
        k = len(FEATURES)
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature {self.temperature}: must be a positive number")
        if not 0 <= self.abstain_below <= 1:
            raise ValueError(f"abstain_below {self.abstain_below}: must be within 0..1")
        if len(self.ood_center) != k or np.shape(self.ood_precision) != (k, k):
            raise ValueError(f"the OOD reference needs {k} features and a {k}x{k} precision matrix")
        if not np.all(np.isfinite(self.ood_precision)) or not np.isfinite(self.ood_threshold):
            raise ValueError("the OOD reference holds a non-finite value")

    # ------------------------------------------------------------ applying
    def probabilities(self, class_counts: np.ndarray) -> np.ndarray:
        return softmax(np.asarray(class_counts, dtype=np.float64) / self.temperature)

    def ood_score(self, features: np.ndarray) -> np.ndarray:
        d = np.asarray(features, dtype=np.float64) - np.asarray(self.ood_center)
        return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", d, np.asarray(self.ood_precision), d), 0.0))

    def assess(self, class_counts: np.ndarray, features: np.ndarray) -> dict[str, np.ndarray]:
        """Per image: probabilities (N, K), confidence, abstain, ood_score, out_of_distribution."""
        p = self.probabilities(class_counts)
        conf = p.max(axis=1)
        score = self.ood_score(features)
        return {"probabilities": p, "confidence": conf, "abstain": conf < self.abstain_below,
                "ood_score": score, "out_of_distribution": score > self.ood_threshold}

    # ---------------------------------------------------------- file form
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        if not isinstance(d, dict):
            raise ValueError("not a JSON object")
        missing = [f for f in ("temperature", "abstain_below", "target_accuracy", "ood_center", "ood_precision",
                               "ood_threshold", "ood_quantile") if f not in d]
        if missing:
            raise ValueError(f"missing {', '.join(missing)}")
        unknown = sorted(set(d) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(unknown)}")
        return cls(**d)


# ----------------------------------------------------------------- fitting


def fit_temperature(class_counts: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the mean negative log-likelihood (bounded search, scipy)."""
    from scipy.optimize import minimize_scalar

    counts = np.asarray(class_counts, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)

    def nll(log_t: float) -> float:
        p = softmax(counts / np.exp(log_t))
        return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-300))))

    span = max(float(np.abs(counts).max()), 1.0)
    res = minimize_scalar(nll, bounds=(np.log(span) - 12, np.log(span) + 4), method="bounded",
                          options={"xatol": 1e-6})
    return float(np.exp(res.x))


def abstain_threshold(confidence: np.ndarray, correct: np.ndarray, target_accuracy: float) -> float:
    """The lowest confidence threshold at which the accepted images (confidence ≥ it) reach
    ``target_accuracy``; 0 when all images already do; above every confidence (accept none) when no
    threshold does."""
    order = np.argsort(-confidence, kind="stable")
    conf, ok = confidence[order], correct[order].astype(np.float64)
    acc = np.cumsum(ok) / np.arange(1, len(ok) + 1)  # accuracy of the k most confident
    best = None
    for k in range(len(conf), 0, -1):  # largest accepted set first
        if k < len(conf) and conf[k] == conf[k - 1]:
            continue  # a threshold cannot split tied confidences
        if acc[k - 1] >= target_accuracy:
            best = k
            break
    if best is None:
        return float(np.nextafter(conf[0], np.inf))
    return 0.0 if best == len(conf) else float(conf[best - 1])


def risk_coverage(confidence: np.ndarray, correct: np.ndarray) -> dict[str, list[float]]:
    """Accuracy on the accepted images against coverage, accepting the most confident first."""
    order = np.argsort(-confidence, kind="stable")
    ok = correct[order].astype(np.float64)
    n = np.arange(1, len(ok) + 1)
    return {"coverage": (n / len(ok)).tolist(), "accuracy": (np.cumsum(ok) / n).tolist(),
            "threshold": confidence[order].tolist()}


def fit(val_counts: np.ndarray, val_labels: np.ndarray, val_features: np.ndarray, train_features: np.ndarray,
        target_accuracy: float = 0.99, ood_quantile: float = 0.98, fitted: dict[str, Any] | None = None) -> Calibration:
    """Temperature and abstention threshold on the validation images, the OOD reference on the
    training images' features and its threshold at the ``ood_quantile`` of the validation scores."""
    from sklearn.covariance import LedoitWolf

    if not 0 < target_accuracy <= 1:
        raise ValueError(f"target accuracy {target_accuracy}: must be within (0, 1]")
    if not 0.5 <= ood_quantile < 1:
        raise ValueError(f"OOD quantile {ood_quantile}: must be within [0.5, 1)")
    if len(val_labels) < 20 or len(train_features) < 2 * len(FEATURES):
        raise ValueError(f"calibration needs at least 20 validation and {2 * len(FEATURES)} training images "
                         f"(got {len(val_labels)} and {len(train_features)})")
    y = np.asarray(val_labels)
    t = fit_temperature(val_counts, y)
    lw = LedoitWolf().fit(np.asarray(train_features, dtype=np.float64))
    cal = Calibration(t, 0.0, float(target_accuracy), lw.location_.tolist(), lw.precision_.tolist(), 0.0,
                      float(ood_quantile))
    p = cal.probabilities(val_counts)
    conf, correct = p.max(1), p.argmax(1) == y
    cal.abstain_below = abstain_threshold(conf, correct, target_accuracy)
    scores = cal.ood_score(val_features)
    cal.ood_threshold = float(np.quantile(scores, ood_quantile))
    accepted = conf >= cal.abstain_below
    cal.fitted = {
        **(fitted or {}),
        "validation_images": int(len(y)),
        "training_images": int(len(train_features)),
        "validation_nll": float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], 1e-300)))),
        "validation_accuracy": float(correct.mean()),
        "validation_coverage": float(accepted.mean()),
        "validation_accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
        "validation_flagged": float(np.mean(scores > cal.ood_threshold)),
        "features": list(FEATURES),
    }
    return cal
