"""Uniform weight averaging of runs fine-tuned from one start (a "model soup").

Wortsman et al. 2022 ("Model soups") average the weights of fine-tunes of one pre-trained
network; runs that left the same start with different batch orders usually sit in one basin, so
their mean is a network, not a blur of several. Here the average is taken over float weights,
SE gates and learned batch-norm means alike; the export rounds it onto the 8-bit grid exactly as
it rounds any run's ``best.pt``, so the soup is deployed and checked like a trained run.

Only runs that can be compared are averaged: the same model config and classes (else the state
dicts mean different things) and the same split (else "validated on held-out images" would not
hold for the average: one run's training images would be another's validation images).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from lava_allnet.config import ModelConfig
from lava_allnet.errors import AllnetError
from lava_allnet.model import build_model
from training.checkpoint import save_json, save_torch
from training.trainer import read_best

SPLIT_KEYS = ("train", "val", "test")


def _read_run(run_dir: Path) -> dict:
    ck, cfg = read_best(run_dir)
    if ck.get("graded"):
        raise AllnetError(f"{run_dir}: a graded run (its message steps are calibrated per run, so weights from "
                          "several runs do not average into one network); soup takes spiking runs")
    try:
        split = None
        if (run_dir / "split.json").is_file():
            doc = json.loads((run_dir / "split.json").read_text())
            split = {k: sorted(doc.get(k) or []) for k in SPLIT_KEYS}
        metrics = {}
        if (run_dir / "metrics.json").is_file():
            metrics = json.loads((run_dir / "metrics.json").read_text()).get("best") or {}
    except (OSError, ValueError, AttributeError) as exc:
        raise AllnetError(f"{run_dir}: cannot read its split.json or metrics.json ({exc})") from exc
    return {"dir": run_dir, "config": cfg.to_dict(), "state": ck["model"], "split": split, "epoch": ck.get("epoch"),
            "val_accuracy": metrics.get("val_accuracy"), "val_loss": metrics.get("val_loss")}


def average_states(states: list[dict[str, torch.Tensor]], names: list[str]) -> dict[str, torch.Tensor]:
    """The element-wise mean of float tensors (summed in float64); other tensors must agree."""
    keys = list(states[0])
    for st, name in zip(states[1:], names[1:]):
        if set(st) != set(keys):
            diff = sorted(set(st) ^ set(keys))
            raise AllnetError(f"{name}: parameters differ from {names[0]}'s ({', '.join(diff[:4])})")
    out = {}
    for k in keys:
        ts = [st[k] for st in states]
        for t, name in zip(ts[1:], names[1:]):
            if t.shape != ts[0].shape:
                raise AllnetError(f"{name}: {k} has shape {tuple(t.shape)}, {names[0]} {tuple(ts[0].shape)}")
        if ts[0].is_floating_point():
            out[k] = (sum(t.double() for t in ts) / len(ts)).to(ts[0].dtype)
        else:  # counters and the like: averaging them means nothing, they must be equal
            for t, name in zip(ts[1:], names[1:]):
                if not torch.equal(t, ts[0]):
                    raise AllnetError(f"{name}: non-float {k} differs from {names[0]}'s; cannot average")
            out[k] = ts[0].clone()
    return out


def soup(run_dirs: list[Path], out_dir: Path) -> dict:
    """Average the ``best.pt`` of ``run_dirs`` into a new run directory ``out_dir``.

    ``out_dir`` gets ``best.pt`` (exportable with ``lava-allnet export``), ``classes.json``,
    ``split.json`` and ``config.json`` from the first run, and ``soup.json`` naming the runs.
    """
    run_dirs = [Path(d) for d in run_dirs]
    if len(run_dirs) < 2:
        raise AllnetError("soup: give at least two run directories")
    resolved = [d.resolve() for d in run_dirs]
    if len(set(resolved)) != len(resolved):
        raise AllnetError("soup: a run directory is given twice (it would weigh double)")
    out_dir = Path(out_dir)
    if out_dir.resolve() in resolved:
        raise AllnetError(f"soup: --out {out_dir} is one of the runs")
    if (out_dir / "best.pt").exists():
        raise AllnetError(f"soup: {out_dir}/best.pt exists; choose a new --out")
    runs = [_read_run(d) for d in run_dirs]
    first = runs[0]
    for r in runs[1:]:
        if r["config"] != first["config"]:
            diff = sorted(k for k in set(r["config"]) | set(first["config"]) if r["config"].get(k) != first["config"].get(k))
            raise AllnetError(f"{r['dir']}: model config differs from {first['dir']}'s in {', '.join(diff)}")
        if r["split"] != first["split"]:
            raise AllnetError(f"{r['dir']}: its split.json differs from {first['dir']}'s (or one is missing); "
                              "runs on different splits cannot be validated as one model")
    state = average_states([r["state"] for r in runs], [str(r["dir"]) for r in runs])
    try:  # fail here, not at export: the mean must still be this config's network
        build_model(ModelConfig.from_dict(first["config"])).load_state_dict(state)
    except Exception as exc:
        raise AllnetError(f"soup: the averaged weights do not load into the runs' model ({exc})") from exc

    out_dir.mkdir(parents=True, exist_ok=True)
    for name in ("classes.json", "split.json", "config.json"):
        src = first["dir"] / name
        if src.is_file():
            (out_dir / name).write_bytes(src.read_bytes())
    ingredients = [{"run": str(r["dir"]), "epoch": r["epoch"], "val_accuracy": r["val_accuracy"],
                    "val_loss": r["val_loss"]} for r in runs]
    summary = {"method": "uniform weight average of best.pt", "runs": ingredients,
               "parameters": int(sum(t.numel() for t in state.values() if t.is_floating_point()))}
    save_torch({"model": state, "config": first["config"], "epoch": None, "soup": ingredients}, out_dir / "best.pt")
    save_json(summary, out_dir / "soup.json")
    return summary
