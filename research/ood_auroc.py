"""Out-of-distribution and abstention figures of a calibrated model (the model card's table).

    python research/ood_auroc.py MODEL.net [--data ../shared/data/all-aria] [--split models/neurallnet-aria.split.json]

In distribution: the split's test images of ``original/``. Out of distribution: the same test
images of ``segmented/`` (never trained or selected on) and 200 synthetic smears
(``lava-allnet data synth``, seed 1). Prints AUROC of ``ood_score`` against each, the share of
each set flagged, and the test images' coverage and accuracy on accepted images. With ``--gains
1.3,1.4``, the test images at each exposure gain (multiplied, clipped at 255, as ``robustness``
does) too: AUROC, the share flagged, accuracy, and accuracy on the images neither flagged nor
abstained (what a user who heeds the warnings reads). torch backend.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

import lava_allnet
from lava_allnet.api import dataset_inputs
from lava_allnet.data import synth
from lava_allnet.evaluation import distort

def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--data", default="../shared/data/all-aria")
    ap.add_argument("--split", default="models/neurallnet-aria.split.json")
    ap.add_argument("--gains", default="", help="exposure gains to add as sets, e.g. 1.3,1.4")
    args = ap.parse_args()
    model = lava_allnet.load(args.model)
    if model.spec.calibration is None:
        raise SystemExit("the model has no calibration: lava-allnet calibrate first")
    data = Path(args.data)
    test = dataset_inputs(model.spec, data / "original", args.split, "test")
    seg = dataset_inputs(model.spec, data / "segmented", args.split, "test")
    with tempfile.TemporaryDirectory() as tmp:
        synth.generate_dataset(Path(tmp), 50, size=224, seed=1)
        syn = model.predict([tmp], backend="torch")
    ind = model.predict(test.images, backend="torch")
    out_seg = model.predict(seg.images, backend="torch")
    labels = np.asarray(test.labels)
    pred = np.asarray([r["predicted_index"] for r in ind])
    accepted = ~np.asarray([r["abstain"] for r in ind])
    s_in = np.asarray([r["ood_score"] for r in ind])
    report = {"model": args.model, "test_images": len(ind), "test_accuracy": float(np.mean(pred == labels)),
              "test_coverage": float(accepted.mean()),
              "test_accepted_accuracy": float(np.mean(pred[accepted] == labels[accepted])) if accepted.any() else None,
              "test_flagged": float(np.mean([r["out_of_distribution"] for r in ind]))}
    def against(rows) -> dict:
        """AUROC of ood_score, these rows against the clean test images, and the share flagged."""
        s_out = np.asarray([r["ood_score"] for r in rows])
        y = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
        return {"images": len(rows), "auroc": float(roc_auc_score(y, np.r_[s_in, s_out])),
                "flagged": float(np.mean([r["out_of_distribution"] for r in rows]))}

    for name, rows in (("segmented", out_seg), ("synthetic", syn)):
        report[name] = against(rows)
    for g in [float(v) for v in args.gains.split(",") if v]:
        rows = model.predict(distort(test.images, "illumination", g), backend="torch")
        ok = np.asarray([r["predicted_index"] for r in rows]) == labels
        kept = ~np.asarray([r["out_of_distribution"] or r["abstain"] for r in rows])
        report[f"gain {g:g}"] = {
            **against(rows), "accuracy": float(ok.mean()), "kept": float(kept.mean()),
            "kept_accuracy": float(ok[kept].mean()) if kept.any() else None,
            "wrong_flagged_or_abstained": int((~ok & ~kept).sum()), "wrong": int((~ok).sum())}
    print(json.dumps(report, indent=2))

if __name__ == "__main__":
    main()
