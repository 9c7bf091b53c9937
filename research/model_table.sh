#!/usr/bin/env bash
# The v2 issue's table for one model file, on the test split (the model card's figures):
#   research/model_table.sh MODEL.net OUT_DIR
# clean (simulator and torch, compared image for image), colour-equalised test images, segmented/
# test images, robustness (torch), Grad-CAM ratio, and activity/energy on every test image
# (torch: the counts equal the simulator's). Writes everything under OUT_DIR (outside the repository:
# the equalised images are derived from the data) and prints a summary at the end.
set -euo pipefail
MODEL=$(realpath "$1"); OUT=$(realpath -m "$2")
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
DATA=../shared/data/all-aria; SPLIT=models/neurallnet-aria.split.json
PY=${PYTHON:-python}; LA="$PY -m lava_allnet"
mkdir -p "$OUT"
$LA evaluate "$MODEL" $DATA/original --split $SPLIT --subset test --backend sim --out "$OUT/test-sim" --json > "$OUT/test-sim.json"
$LA evaluate "$MODEL" $DATA/original --split $SPLIT --subset test --backend torch --out "$OUT/test-torch" --json > "$OUT/test-torch.json"
[ -d "$OUT/equalised" ] || $PY research/equalise.py $DATA/original "$OUT/equalised" --subset test
$LA evaluate "$MODEL" "$OUT/equalised" --backend torch --json > "$OUT/equalised.json"
$LA evaluate "$MODEL" $DATA/segmented --split $SPLIT --subset test --backend sim --json > "$OUT/segmented.json"
$LA robustness "$MODEL" $DATA/original --split $SPLIT --subset test --out "$OUT/robustness" --json > "$OUT/robustness.json"
$PY research/gradcam_ratio.py "$MODEL" > "$OUT/gradcam.txt"
$PY research/split_files.py test "$OUT/test-files.txt" $SPLIT
mapfile -t FILES < "$OUT/test-files.txt"
$LA profile "$MODEL" "${FILES[@]}" --backend torch --json > "$OUT/profile.json"
$PY - "$OUT" <<'EOF'
import csv, json, sys
from pathlib import Path
out = Path(sys.argv[1])
def rows(d):
    with open(out / d / "predictions.csv") as f:
        return {r["path"]: r for r in csv.DictReader(f)}
sim, tor = rows("test-sim"), rows("test-torch")
same = sum(sim[k] == tor[k] for k in sim)
acc = lambda name: json.load(open(out / name))["accuracy"]
print(f"clean test, sim {acc('test-sim.json'):.3f}, torch {acc('test-torch.json'):.3f}; "
      f"sim == torch (prediction and counts) on {same}/{len(sim)} images")
print(f"colour-equalised test (torch) {acc('equalised.json'):.3f}; segmented test (sim) {acc('segmented.json'):.3f}")
print(open(out / "gradcam.txt").read().strip().splitlines()[-1])
t = json.load(open(out / "profile.json"))["means"]["totals"]
print(f"activity, mean of the test images: {t['synaptic_ops'] / 1e6:.2f} M synaptic ops, "
      f"{t['synaptic_ops_per_ann_mac']:.3f} per ANN MAC, {t['energy_pj'] / 1e6:.0f} uJ (Loihi 1 per-op model)")
print("robustness (torch):", json.dumps(json.load(open(out / "robustness.json")))[:2000])
EOF
