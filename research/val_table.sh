#!/usr/bin/env bash
# The v2 selection figures for one model file, on the validation split only (the model card's
# amendments choose on these; the test split only reports, research/model_table.sh):
#   research/val_table.sh MODEL.net OUT_DIR
# clean and robustness accuracy (torch), activity on every validation image (torch), and the
# twelfth amendment's rule: clean >= 0.975, <= 0.25 synaptic ops per ANN MAC, gains 0.5 / 0.7 >= 0.95,
# noise sigma 16 and occlusion 20% >= 0.93; the score is the worst of the seven robustness measures.
# Last, cells on black and recoloured cells on black (research/masked_val.py: the twenty-fifth
# amendment's eighth measure and the thirty-first's ninth).
set -euo pipefail
MODEL=$(realpath "$1"); OUT=$(realpath -m "$2")
ROOT=$(cd "$(dirname "$0")/.." && pwd); cd "$ROOT"
DATA=../shared/data/all-aria; SPLIT=models/neurallnet-aria.split.json
PY=${PYTHON:-python}; LA="$PY -m lava_allnet"
mkdir -p "$OUT"
$LA robustness "$MODEL" $DATA/original --split $SPLIT --subset val --out "$OUT/robustness" --json > "$OUT/robustness.json"
$PY research/split_files.py val "$OUT/val-files.txt" $SPLIT
mapfile -t FILES < "$OUT/val-files.txt"
$LA profile "$MODEL" "${FILES[@]}" --backend torch --json > "$OUT/profile.json"
$PY - "$OUT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
r = json.load(open(out / "robustness.json"))
d = {k: {row["parameter"]: row["accuracy"] for row in rows} for k, rows in r["distortions"].items()}
seven = {"gain 0.5": d["illumination"][0.5], "gain 0.7": d["illumination"][0.7], "gain 1.3": d["illumination"][1.3],
         "noise 16": d["gaussian_noise"][16.0], "s&p 3%": d["salt_pepper"][0.03], "blur 1.6": d["gaussian_blur"][1.6],
         "occlusion 20%": d["occlusion"][0.2]}
ops = json.load(open(out / "profile.json"))["means"]["totals"]["synaptic_ops_per_ann_mac"]
clean = r["clean"]["accuracy"]
ok = (clean >= 0.975 and ops <= 0.25 and min(seven["gain 0.5"], seven["gain 0.7"]) >= 0.95
      and min(seven["noise 16"], seven["occlusion 20%"]) >= 0.93)
print(f"validation ({r['n_images']} images, torch): clean {clean:.3f}; " + ", ".join(f"{k} {v:.3f}" for k, v in seven.items()))
print(f"worst of the seven {min(seven.values()):.3f}; {ops:.3f} synaptic ops per ANN MAC; candidate: {'yes' if ok else 'no'}")
print("all severities:", json.dumps(d))
PYEOF
$PY research/masked_val.py "$MODEL"
