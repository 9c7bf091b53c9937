"""Clinical-style evaluation: metrics with bootstrap CIs, robustness to distortions, Grad-CAM."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from lava_allnet.result import Run
from lava_allnet.results_file import write_csv


# -------------------------------------------------------------------- metrics


def bootstrap_ci(correct: np.ndarray, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of a 0/1 vector (seeded)."""
    correct = np.asarray(correct, dtype=np.float64)
    if correct.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, correct.size, size=(resamples, correct.size))
    means = correct[idx].mean(axis=1)
    a = (1 - level) / 2
    return float(np.quantile(means, a)), float(np.quantile(means, 1 - a))


def wilson_ci(correct: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (scipy's binomtest)."""
    from scipy.stats import binomtest

    correct = np.asarray(correct)
    if correct.size == 0:
        return (float("nan"), float("nan"))
    ci = binomtest(int(correct.sum()), int(correct.size)).proportion_ci(confidence_level=level, method="wilson")
    return float(ci.low), float(ci.high)


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = 15) -> dict[str, Any]:
    """ECE over ``bins`` equal-width confidence bins (Guo et al. 2017), and the bins for a
    reliability diagram."""
    conf = probabilities.max(1)
    ok = probabilities.argmax(1) == labels
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)  # (lo, hi] bins, 0 in the first
    rows, ece = [], 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(ok[m].mean() - conf[m].mean())
        rows.append({"lower": float(edges[b]), "upper": float(edges[b + 1]), "count": int(m.sum()),
                     "accuracy": float(ok[m].mean()) if m.any() else None,
                     "confidence": float(conf[m].mean()) if m.any() else None})
    return {"ece": float(ece), "bins": rows}


def classification_report(
    labels: Sequence[int], preds: Sequence[int], class_names: Sequence[str], resamples: int = 2000, seed: int = 0,
    scores: np.ndarray | None = None, calibrated: bool = False,
) -> dict[str, Any]:
    """Accuracy with bootstrap and Wilson 95% intervals, per-class precision/recall/F1, balanced
    accuracy, Cohen's kappa, MCC and the confusion matrix (scikit-learn); with per-class
    ``scores`` (N, K), one-vs-rest ROC AUC per class and macro; when they are ``calibrated``
    probabilities, also the 15-bin ECE and its reliability bins."""
    from sklearn.metrics import (balanced_accuracy_score, cohen_kappa_score, confusion_matrix, matthews_corrcoef,
                                 precision_recall_fscore_support, roc_auc_score)

    y, p = np.asarray(labels), np.asarray(preds)
    k = len(class_names)
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=list(range(k)), zero_division=0)
    correct = (y == p).astype(np.float64)
    lo, hi = bootstrap_ci(correct, resamples, seed)
    report: dict[str, Any] = {
        "n_images": int(y.size),
        "accuracy": float(correct.mean()) if y.size else float("nan"),
        "accuracy_ci95": [lo, hi],
        "accuracy_ci95_wilson": list(wilson_ci(correct)),
        "bootstrap": {"resamples": resamples, "seed": seed, "method": "percentile"},
        "balanced_accuracy": float(balanced_accuracy_score(y, p)) if y.size else float("nan"),
        "cohen_kappa": float(cohen_kappa_score(y, p, labels=list(range(k)))) if y.size else float("nan"),
        "mcc": float(matthews_corrcoef(y, p)) if y.size else float("nan"),
        "per_class": {
            c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(class_names)
        },
        "macro_f1": float(np.mean(f1)),
        "confusion_matrix": confusion_matrix(y, p, labels=list(range(k))).tolist(),
        "class_names": list(class_names),
        "roc_auc_ovr": None,
        "ece": None,
    }
    if scores is not None and y.size:
        per = {}
        for i, c in enumerate(class_names):
            pos = y == i
            per[c] = float(roc_auc_score(pos, scores[:, i])) if 0 < pos.sum() < y.size else None
        known = [v for v in per.values() if v is not None]
        report["roc_auc_ovr"] = {"per_class": per, "macro": float(np.mean(known)) if known else None,
                                 "scores": "probabilities" if calibrated else "output spike counts"}
    if calibrated and scores is not None and y.size:
        e = expected_calibration_error(scores, y)
        report["ece"], report["reliability"] = e["ece"], e["bins"]
    return report


def selective_report(confidence: np.ndarray, correct: np.ndarray, abstain: np.ndarray,
                     out_of_distribution: np.ndarray) -> dict[str, Any]:
    """Abstention and OOD figures of a calibrated run: coverage, accuracy on the accepted images,
    the share flagged, and the risk-coverage curve (most confident accepted first)."""
    from lava_allnet.calibration import risk_coverage

    accepted = ~abstain
    return {
        "coverage": float(accepted.mean()) if accepted.size else float("nan"),
        "accepted_accuracy": float(correct[accepted].mean()) if accepted.any() else None,
        "abstained": int(abstain.sum()),
        "out_of_distribution": int(out_of_distribution.sum()),
        "out_of_distribution_share": float(out_of_distribution.mean()) if out_of_distribution.size else float("nan"),
        "risk_coverage": risk_coverage(confidence, correct),
    }


def write_evaluation(report: dict[str, Any], run: Run, out_dir: Path) -> list[Path]:
    """metrics.json, predictions.csv, confusion_matrix.png and, for a calibrated model,
    reliability.png and risk_coverage.png."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = report["class_names"]
    files = [write_csv(run.results, names, out_dir / "predictions.csv")]
    p = out_dir / "metrics.json"
    p.write_text(json.dumps(report, indent=2))
    files.append(p)
    files.append(plot_confusion(report, out_dir / "confusion_matrix.png"))
    if report.get("reliability"):
        files.append(plot_reliability(report, out_dir / "reliability.png"))
    if report.get("selective"):
        files.append(plot_risk_coverage(report, out_dir / "risk_coverage.png"))
    return files


def plot_confusion(report: dict[str, Any], path: Path) -> Path:
    from lava_allnet.plotting import pyplot, save

    plt = pyplot()
    names = report["class_names"]
    cm = np.asarray(report["confusion_matrix"])
    fig, ax = plt.subplots(figsize=(5, 4.3))
    im = ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    lo, hi = report["accuracy_ci95"]
    ax.set_title(f"accuracy {report['accuracy']:.4f} (95% CI {lo:.4f}-{hi:.4f})", fontsize=9)
    fig.colorbar(im, ax=ax)
    return save(fig, path, dpi=130)


def plot_reliability(report: dict[str, Any], path: Path) -> Path:
    """Accuracy against mean confidence per confidence bin, bar width the bin, with the diagonal."""
    from lava_allnet.plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    bins = [b for b in report["reliability"] if b["count"]]
    ax.bar([b["lower"] for b in bins], [b["accuracy"] for b in bins], width=[b["upper"] - b["lower"] for b in bins],
           align="edge", edgecolor="k", alpha=0.7, label="accuracy in bin")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    for b in bins:
        ax.text((b["lower"] + b["upper"]) / 2, min(1.0, b["accuracy"]) + 0.01, str(b["count"]), ha="center", fontsize=6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability ({len(report['reliability'])} bins): ECE {report['ece']:.4f}", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    return save(fig, path, dpi=130)


def plot_risk_coverage(report: dict[str, Any], path: Path) -> Path:
    from lava_allnet.plotting import pyplot, save

    plt = pyplot()
    sel = report["selective"]
    rc = sel["risk_coverage"]
    fig, ax = plt.subplots(figsize=(4.6, 4.2))
    ax.plot(rc["coverage"], rc["accuracy"], lw=1.5)
    ax.scatter([sel["coverage"]], [sel["accepted_accuracy"] if sel["accepted_accuracy"] is not None else np.nan],
               color="C3", zorder=3, label=f"abstention threshold: coverage {sel['coverage']:.3f}")
    ax.set_xlim(0, 1.02)
    ax.set_ylim(max(0.0, min(rc["accuracy"]) - 0.05), 1.005)
    ax.set_xlabel("coverage (share of images accepted, most confident first)")
    ax.set_ylabel("accuracy on accepted images")
    ax.set_title("risk-coverage", fontsize=9)
    ax.legend(loc="lower left", fontsize=7)
    return save(fig, path, dpi=130)


def confusion_text(report: dict[str, Any]) -> str:
    names = report["class_names"]
    w = max(8, *(len(n) for n in names))
    lines = ["true \\ pred".ljust(w + 2) + "".join(n.rjust(w + 1) for n in names)]
    for n, row in zip(names, report["confusion_matrix"]):
        lines.append(n.ljust(w + 2) + "".join(str(v).rjust(w + 1) for v in row))
    return "\n".join(lines)


# ----------------------------------------------------------------- robustness

DISTORTIONS = ("gaussian_noise", "salt_pepper", "gaussian_blur", "occlusion", "rotation", "illumination")
SEVERITIES = {
    "gaussian_noise": (8.0, 16.0, 32.0),  # sigma in grey levels
    "salt_pepper": (0.01, 0.03, 0.08),  # fraction of pixels
    "gaussian_blur": (0.8, 1.6, 3.0),  # sigma in pixels at the model's input size
    "occlusion": (0.1, 0.2, 0.35),  # side of a random grey square / image side
    "rotation": (15.0, 45.0, 90.0),  # degrees (random sign)
    "illumination": (0.7, 1.3, 0.5),  # global brightness gain
}


def distort(images: np.ndarray, kind: str, severity: float, seed: int = 0, offset: int = 0) -> np.ndarray:
    """Apply one distortion to uint8 (N, 3, H, W) images, deterministically: image i draws from its
    own generator, seeded by (``seed``, ``offset`` + i), so a dataset distorts the same whether it
    comes in one batch or in chunks (``offset``: the chunk's first index)."""
    import cv2

    x = images.astype(np.float64)
    n, c, h, w = images.shape
    if kind not in DISTORTIONS:
        raise ValueError(f"unknown distortion {kind!r}")
    for i in range(n):
        rng = np.random.default_rng([int(seed), int(offset) + i])
        if kind == "gaussian_noise":
            x[i] += rng.normal(0, severity, x[i].shape)
        elif kind == "salt_pepper":
            mask = rng.random((1, h, w)) < severity
            salt = rng.random((1, h, w)) < 0.5
            x[i] = np.where(mask, np.where(salt, 255.0, 0.0), x[i])
        elif kind == "gaussian_blur":
            x[i] = cv2.GaussianBlur(images[i].transpose(1, 2, 0), (0, 0), severity).transpose(2, 0, 1)
        elif kind == "occlusion":
            side = max(1, int(round(severity * h)))
            y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            x[i, :, y0:y0 + side, x0:x0 + side] = 128.0
        elif kind == "rotation":
            angle = severity * (1 if rng.random() < 0.5 else -1)
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            x[i] = cv2.warpAffine(images[i].transpose(1, 2, 0), m, (w, h), flags=cv2.INTER_LINEAR,
                                  borderMode=cv2.BORDER_REFLECT).transpose(2, 0, 1)
        elif kind == "illumination":
            x[i] *= severity
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def robustness(
    run_images: Callable[[np.ndarray], np.ndarray],
    chunks: Iterable[tuple[np.ndarray, np.ndarray]] | np.ndarray,
    labels: np.ndarray | None = None,
    distortions: Sequence[str] = DISTORTIONS,
    severities: dict[str, Sequence[float]] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Accuracy (with bootstrap CI) of ``run_images(images) -> predictions`` per distortion and severity.

    ``chunks``: (images, labels) pairs, distorted and run one at a time (bounded memory), or one
    image array with ``labels``. The result does not depend on the chunking."""
    severities = severities or SEVERITIES
    if isinstance(chunks, np.ndarray):
        chunks = [(chunks, np.asarray(labels))]
    levels = [(kind, level, sev) for kind in distortions for level, sev in enumerate(severities[kind], start=1)]
    clean, preds, ys = [], {(k, lv): [] for k, lv, _ in levels}, []
    offset = 0
    for images, y in chunks:
        clean.append(run_images(images))
        ys.append(np.asarray(y))
        for kind, level, sev in levels:
            if progress is not None:
                progress(f"{kind} {sev}")
            preds[(kind, level)].append(run_images(distort(images, kind, sev, seed=seed + level, offset=offset)))
        offset += len(images)
    labels = np.concatenate(ys)
    clean_p = np.concatenate(clean)
    lo, hi = bootstrap_ci(clean_p == labels, seed=seed)
    out: dict[str, Any] = {"clean": {"accuracy": float(np.mean(clean_p == labels)), "ci95": [lo, hi]}, "distortions": {}}
    for kind in distortions:
        rows = []
        for level, sev in enumerate(severities[kind], start=1):
            p = np.concatenate(preds[(kind, level)])
            ok = p == labels
            lo, hi = bootstrap_ci(ok, seed=seed)
            rows.append({"severity": level, "parameter": float(sev), "accuracy": float(ok.mean()), "ci95": [lo, hi],
                         "changed_predictions": float(np.mean(p != clean_p))})
        out["distortions"][kind] = rows
    out["n_images"] = int(len(labels))
    return out


def write_robustness(report: dict[str, Any], out_dir: Path) -> list[Path]:
    from lava_allnet.plotting import pyplot, save

    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    p = out_dir / "robustness.json"
    p.write_text(json.dumps(report, indent=2))
    files.append(p)
    for kind, rows in report["distortions"].items():
        fig, ax = plt.subplots(figsize=(4.5, 3.2))
        xs = [0] + [r["severity"] for r in rows]
        ys = [report["clean"]["accuracy"]] + [r["accuracy"] for r in rows]
        lo = [report["clean"]["ci95"][0]] + [r["ci95"][0] for r in rows]
        hi = [report["clean"]["ci95"][1]] + [r["ci95"][1] for r in rows]
        ax.plot(xs, ys, marker="o")
        ax.fill_between(xs, lo, hi, alpha=0.2)
        ax.set_xticks(xs, ["clean"] + [f"{r['severity']}\n({r['parameter']:g})" for r in rows])
        ax.set_ylim(0, 1.02)
        ax.set_ylabel("accuracy")
        ax.set_title(kind.replace("_", " "))
        files.append(save(fig, out_dir / f"robustness_{kind}.png"))
    return files


# -------------------------------------------------------------------- Grad-CAM


def grad_cam(net, image_uint8: np.ndarray, layer: str | None = None, class_index: int | None = None) -> dict[str, Any]:
    """Grad-CAM through the surrogate gradients for one (3, H, W) uint8 image.

    The layer's spikes summed over time are the activation map; the target is
    the output spike count of the predicted (or given) class. A graded network
    (``lava_allnet.graded``): its messages and class scores, gradients straight
    through its rounding.
    """
    import torch
    import torch.nn.functional as F

    image_uint8 = net.frontend.apply(np.asarray(image_uint8)[None])[0]  # the model's input front end first
    convs = net.conv_names()
    if layer is None:
        # The deepest conv whose map keeps at least 1/8 of the image side (and 8
        # pixels): measured on a NeurALLNet trained on the smears, conv4's 8x8 map of a 128-pixel
        # smear was too coarse to tell a leukocyte from its surroundings (heat on
        # the darkest fifth 1.11x the rest, median of 8 images), conv3's 16x16
        # map put it on the cells (1.64x).
        sizes = {}
        with torch.no_grad():
            h = net.encode(torch.from_numpy(image_uint8[None]))
            out = net(h, keep=tuple(convs))
        for n in convs:
            sizes[n] = out.activations[n].shape[3]
        min_side = max(8, image_uint8.shape[-1] // 8)
        layer = max((n for n in convs if sizes[n] >= min_side), key=convs.index, default=convs[0])
    if layer not in convs:
        raise ValueError(f"layer {layer!r} is not a conv layer; choose one of {convs}")
    net.eval()
    x = net.encode(torch.from_numpy(image_uint8[None]))
    with torch.enable_grad():
        out = net(x, keep=(layer,))
        act = out.activations[layer]  # (1, T, C, H, W)
        act.retain_grad()
        pred = int(out.predictions()[0])
        k = pred if class_index is None else class_index
        out.class_counts[0, k].backward()
    grad = act.grad.detach()[0]  # (T, C, H, W)
    a = act.detach()[0]
    weights = grad.mean(dim=(0, 2, 3))  # (C,)
    cam = torch.relu((weights[:, None, None] * a.sum(0)).sum(0))
    if cam.max() > 0:
        cam = cam / cam.max()
    cam_up = F.interpolate(cam[None, None], size=image_uint8.shape[1:], mode="bilinear", align_corners=False)[0, 0]
    return {
        "layer": layer,
        "class_index": k,
        "predicted_index": pred,
        "class_counts": out.class_counts.detach()[0].tolist(),
        "cam": cam_up.numpy(),
        "gradient_norm": float(grad.norm()),
    }


def save_cam_png(image_uint8: np.ndarray, cam: np.ndarray, path: Path, title: str, dpi: int = 130) -> None:
    from lava_allnet.plotting import pyplot, save

    plt = pyplot()
    img = image_uint8.transpose(1, 2, 0)
    fig, axes = plt.subplots(1, 2, figsize=(8, 4.2))
    axes[0].imshow(img)
    axes[0].set_title("input")
    axes[1].imshow(img)
    axes[1].imshow(cam, cmap="jet", alpha=0.45, vmin=0, vmax=1)
    axes[1].set_title(title, fontsize=9)
    for ax in axes:
        ax.axis("off")
    save(fig, path, dpi=dpi)
