"""The image paths of one subset of the shipped split, one per line (for ``lava-allnet profile``):

    python research/split_files.py test|val|train OUT.txt [SPLIT.json]
"""
import json
import sys
from pathlib import Path

subset, out = sys.argv[1], Path(sys.argv[2])
split = json.load(open(sys.argv[3] if len(sys.argv) > 3 else "models/neurallnet-aria.split.json"))
root = Path(split["root"]).resolve()  # relative to the project root (the cwd)
out.write_text("".join(f"{root / p}\n" for p in split[subset]))
