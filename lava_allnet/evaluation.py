"""Clinical-style evaluation: metrics with bootstrap CIs, robustness to distortions, Grad-CAM."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from lava_allnet.result import Run


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


def classification_report(
    labels: Sequence[int], preds: Sequence[int], class_names: Sequence[str], resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y, p = np.asarray(labels), np.asarray(preds)
    k = len(class_names)
    prec, rec, f1, support = precision_recall_fscore_support(y, p, labels=list(range(k)), zero_division=0)
    correct = (y == p).astype(np.float64)
    lo, hi = bootstrap_ci(correct, resamples, seed)
    return {
        "n_images": int(y.size),
        "accuracy": float(correct.mean()) if y.size else float("nan"),
        "accuracy_ci95": [lo, hi],
        "bootstrap": {"resamples": resamples, "seed": seed, "method": "percentile"},
        "per_class": {
            c: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, c in enumerate(class_names)
        },
        "macro_f1": float(np.mean(f1)),
        "confusion_matrix": confusion_matrix(y, p, labels=list(range(k))).tolist(),
        "class_names": list(class_names),
    }


def write_evaluation(report: dict[str, Any], run: Run, out_dir: Path) -> list[Path]:
    from lava_allnet.plotting import pyplot, save

    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    p = out_dir / "predictions.csv"
    names = report["class_names"]
    with open(p, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "prediction", "correct", *[f"spikes_{c}" for c in names]])
        for r in run.results:
            w.writerow([r.path, r.label or "", r.prediction, "" if r.correct is None else int(r.correct),
                        *[r.class_counts[c] for c in names]])
    files.append(p)
    p = out_dir / "metrics.json"
    p.write_text(json.dumps(report, indent=2))
    files.append(p)
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
    files.append(save(fig, out_dir / "confusion_matrix.png", dpi=130))
    return files


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


def distort(images: np.ndarray, kind: str, severity: float, seed: int = 0) -> np.ndarray:
    """Apply one distortion to uint8 (N, 3, H, W) images, deterministically."""
    import cv2

    rng = np.random.default_rng(seed)
    x = images.astype(np.float64)
    n, c, h, w = images.shape
    if kind == "gaussian_noise":
        x = x + rng.normal(0, severity, x.shape)
    elif kind == "salt_pepper":
        mask = rng.random((n, 1, h, w)) < severity
        salt = rng.random((n, 1, h, w)) < 0.5
        x = np.where(mask, np.where(salt, 255.0, 0.0), x)
    elif kind == "gaussian_blur":
        out = np.empty_like(x)
        for i in range(n):
            img = images[i].transpose(1, 2, 0)
            out[i] = cv2.GaussianBlur(img, (0, 0), severity).transpose(2, 0, 1)
        x = out
    elif kind == "occlusion":
        side = max(1, int(round(severity * h)))
        for i in range(n):
            y0, x0 = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
            x[i, :, y0:y0 + side, x0:x0 + side] = 128.0
    elif kind == "rotation":
        out = np.empty_like(x)
        for i in range(n):
            angle = severity * (1 if rng.random() < 0.5 else -1)
            m = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
            img = images[i].transpose(1, 2, 0)
            out[i] = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT).transpose(2, 0, 1)
        x = out
    elif kind == "illumination":
        x = x * severity
    else:
        raise ValueError(f"unknown distortion {kind!r}")
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def robustness(
    run_images: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    labels: np.ndarray,
    distortions: Sequence[str] = DISTORTIONS,
    severities: dict[str, Sequence[float]] | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Accuracy (with bootstrap CI) of ``run_images(images) -> predictions`` per distortion and severity."""
    severities = severities or SEVERITIES
    clean = run_images(images)
    lo, hi = bootstrap_ci(clean == labels, seed=seed)
    out: dict[str, Any] = {"clean": {"accuracy": float(np.mean(clean == labels)), "ci95": [lo, hi]}, "distortions": {}}
    for kind in distortions:
        rows = []
        for level, sev in enumerate(severities[kind], start=1):
            if progress is not None:
                progress(f"{kind} {sev}")
            preds = run_images(distort(images, kind, sev, seed=seed + level))
            ok = preds == labels
            lo, hi = bootstrap_ci(ok, seed=seed)
            rows.append({"severity": level, "parameter": float(sev), "accuracy": float(ok.mean()), "ci95": [lo, hi],
                         "changed_predictions": float(np.mean(preds != clean))})
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
    the output spike count of the predicted (or given) class.
    """
    import torch
    import torch.nn.functional as F

    from lava_allnet.model import ConvBlock

    image_uint8 = net.frontend.apply(np.asarray(image_uint8)[None])[0]  # the model's input front end first
    convs = [n for n, b in net.blocks.items() if isinstance(b, ConvBlock)]
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


def save_cam_png(image_uint8: np.ndarray, cam: np.ndarray, path: Path, title: str) -> None:
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
    save(fig, path, dpi=130)
