"""Atomic checkpoint and JSON writes: write a temporary file, fsync, rename."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def _atomic(path: Path, write) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_torch(obj: Any, path: Path) -> None:
    _atomic(path, lambda fh: torch.save(obj, fh))


def save_json(obj: Any, path: Path) -> None:
    _atomic(path, lambda fh: fh.write(json.dumps(obj, indent=2, sort_keys=True).encode()))


def load_torch(path: Path) -> Any:
    return torch.load(path, map_location="cpu", weights_only=False)
