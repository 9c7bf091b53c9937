"""Recipe files: one TOML file trains a model, in one or more stages (``recipes/README.md``).

A recipe has sections (``[data]``, ``[model]``, ``[schedule]``, ``[augment]``, ``[losses]``,
``[losses.range]``, ``[losses.distill]``, ``[losses.activations]``, ``[teacher]``, ``[biases]``, ``[averaging]``, ``[graded]``) and may list
``[[stages]]``: each stage takes the top-level sections and overrides some keys, and starts from
the previous stage's weights unless its ``schedule.init`` says otherwise. ``--set section.key=value``
overrides a key for every stage (``--set stages.N.section.key=value`` for stage N only).

A run directory holds ``recipe.toml`` (the resolved recipe: every key of every stage, absolute
paths), one directory per stage (``1-NAME/``: a training run with its own ``checkpoint.pt``,
``best.pt``, ``metrics.json``, and ``model.net`` once the stage is done), ``teacher.pt`` when a stage
distils, ``model.net`` (the last stage's export) and ``metrics.json`` (each stage's best epoch).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lava_allnet.config import MODELS, get_model_config
from lava_allnet.errors import AllnetError
from lava_allnet.frontend import EXACT_OFFSET_BOUND, OFFSET_BOUND


class Ints:
    """Key type: a list of positive integers."""


@dataclass(frozen=True)
class Key:
    type: type
    default: Any
    doc: str
    path: bool = False  # a file or folder (relative to the recipe file; absolute once resolved)


INIT_DOC = ('"scratch" (a fresh, seeded, rate-calibrated network), "previous" (the previous stage\'s best.pt), '
            '"previous-export" (the previous stage\'s exported model.net: its 8-bit weights and integer biases), '
            '"teacher" (the ANN teacher\'s convs with their batch-norm scale folded in and its head, then rate-calibrated; '
            'the teacher is trained first if the run has none), '
            'or a best.pt / .net path; "" = "scratch" for the first stage, "previous" after it')

SCHEMA: dict[str, dict[str, Key]] = {
    "data": {
        "root": Key(str, "synthetic", 'ImageFolder of training images (one folder per class), or "synthetic": smears '
                                      "generated into the run directory with the first stage's seed", path=True),
        "synthetic_per_class": Key(int, 150, "synthetic images per class (root = \"synthetic\")"),
        "split": Key(str, "", "a saved split.json to train, validate and hold out on; \"\": the first stage draws a "
                              "stratified split with its seed and every later stage reuses it", path=True),
        "val_fraction": Key(float, 0.2, "validation share of a drawn split"),
        "test_fraction": Key(float, 0.0, "held-out test share of a drawn split (never trained or validated on)"),
    },
    "model": {
        "name": Key(str, "neurallnet", "a registered model config (`lava-allnet models`)"),
        "input_size": Key(int, 0, "input side in pixels (0: the config's)"),
        "time_steps": Key(int, 0, "steps per image, T (0: the config's)"),
        "input_once": Key(bool, False, "send the static image once per image (first step) into a conv1 whose current "
                                       "holds it (decay 1/4096, Lava du = 0): one pass of input synaptic ops instead of "
                                       "T; model file format version 2"),
        "threshold": Key(float, 0.0, "the neurons' threshold for a binary input of weight 1 (0: the config's, 1.25); "
                                     "graded-input layers scale it by their message's 1.0 (conv1: 64)"),
        "threshold_gains": Key(Ints, [], "an integer per weight layer (conv1..convN, fc) multiplying its threshold, "
                                         "weights and states (the same function on a finer weight grid); [] = all 1"),
        "family": Key(str, "spiking", '"spiking" (CUBA neurons, binary spikes over T steps) or "graded" (NeurALLNet-G: '
                                      "one graded message per active neuron and image, Loihi 2; the ANN teacher "
                                      "fine-tuned through the messages, then exported as integers; model file format "
                                      "version 4)"),
    },
    "graded": {
        "threshold": Key(float, 1.0, "model.family = \"graded\": each layer sends only activations of at least this "
                                     "times its mean positive activation (on 256 training images); higher: fewer "
                                     "synaptic ops"),
    },
    "schedule": {
        "epochs": Key(int, 10, "training epochs (one-cycle learning rate over them)"),
        "batch_size": Key(int, 16, "images per step (with --nproc or torchrun: the global batch, split over the ranks)"),
        "lr": Key(float, 3e-3, "peak learning rate of the one-cycle schedule (Adam)"),
        "weight_decay": Key(float, 0.0, "Adam's weight decay"),
        "adam_eps": Key(float, 1e-8, "Adam's epsilon"),
        "seed": Key(int, 0, "seed of init, split, shuffling and augmentation"),
        "threads": Key(int, 0, "torch CPU threads (0: torch's default), shared by the ranks of one machine; results round differently across thread counts"),
        "init": Key(str, "", INIT_DOC, path=True),
    },
    "augment": {
        "flips": Key(bool, True, "random flips and 90-degree rotations"),
        "color_jitter": Key(float, 0.0, "strength of brightness / stain / contrast jitter (1: gain and contrast ±12%, "
                                        "stain ±5% per channel; 0: off)"),
        "gain": Key(list, [1.0, 1.0], "exposure: each image multiplied by a gain drawn in [low, high], then clipped "
                                      "to 0..255 (over-exposure clips the background, as a microscope does)"),
        "gamma": Key(list, [1.0, 1.0], "gamma drawn in [low, high]"),
        "contrast": Key(float, 0.0, "contrast change drawn in ±contrast around the image mean"),
        "stain": Key(float, 0.0, "per-channel gain drawn in ±stain (stain and lamp colour)"),
        "hue": Key(float, 0.0, "probability of a random mix of the colour channels (stain rendering, colour spaces)"),
        "noise": Key(float, 0.0, "Gaussian noise of a sigma drawn up to this (grey levels)"),
        "blur": Key(float, 0.0, "Gaussian blur of a sigma drawn up to this (pixels)"),
        "occlusion": Key(float, 0.0, "one rectangle of a random grey covering up to this share of the image"),
        "background": Key(float, 0.0, "probability of replacing everything but the stained white cells by one random "
                                      "colour (black in a share background_black of the cases), so the network learns "
                                      "the cells"),
        "background_black": Key(float, 0.5, "share of the background replacements that are black (a segmented or "
                                            "masked image); the rest take a random colour"),
        "background_recolour": Key(float, 0.0, "share of the background replacements whose cells are rendered in other "
                                               "colours (each channel inverted with probability 0.5, then a random mix "
                                               "of the channels in half of them), as a segmented rendering recolours them"),
    },
    "frontend": {
        "name": Key(str, "none", 'the input front end, stored in the model file and applied by every backend before '
                                 'the encoding: "none", "reinhard" (each channel\'s mean and std set to the '
                                 'training images\' average), "anchor" (each channel scaled so a low percentile of '
                                 'its stained pixels lands on the training images\' average) or "stretch" (a low and '
                                 'a high percentile of each channel mapped to the training images\' average)'),
        "percentile": Key(float, 5.0, "anchor: the percentile of the non-black, unsaturated pixels (the nuclei); stretch: "
                                      "this one and 100 minus it"),
        "offset_bound": Key(int, OFFSET_BOUND, f"bound of each channel's offset, in grey levels: {OFFSET_BOUND} is the "
                                               "map of every model before format version 5 (a channel that clipped flat "
                                               f"lands near white); {EXACT_OFFSET_BOUND} never binds (exact Reinhard; "
                                               "the model file needs version 5)"),
        "impulse": Key(int, 0, "dead- and hot-pixel correction before the statistics: a pixel that differs in a channel "
                               "from the median of its 3x3 neighbourhood by more than this many grey levels takes "
                               "that median (0: off; the model file needs version 6)"),
        "exclude_black": Key(bool, False, "black pixels (every channel at most 16) carry no image: left out of the "
                                          "statistics and sent as 0, so cells on a black (segmented, masked) "
                                          "background are mapped by the cells' statistics (the model file needs "
                                          "version 7)"),
    },
    "losses": {
        "logit_scale": Key(float, 10.0, "cross-entropy logits = logit_scale x output spike rate per class"),
    },
    "losses.range": {
        "weight": Key(float, 1e-3, "weight of the penalty on neuron states beyond half of Loihi's 24-bit registers (0: off)"),
    },
    "losses.distill": {
        "weight": Key(float, 0.0, "share W of the loss taken by distillation from the ANN teacher: "
                                  "(1-W) x cross-entropy + W x T² x KL (0: off)"),
        "temperature": Key(float, 2.0, "softmax temperature T of the distillation term"),
    },
    "losses.activations": {
        "weight": Key(float, 0.0, "model.family = \"graded\": weight W of a term holding each hidden layer's graded "
                                  "messages to the frozen teacher's ReLU outputs on the same batch: + W x the mean over "
                                  "layers of |messages - teacher|² / |teacher|² (0: off)"),
    },
    "losses.rate": {
        "weight": Key(float, 0.0, "lava-dl's SparsityEnforcer on every conv and dense layer (or `layers`): weight x Σ relu(mean "
                                  "spike rate − max_rate)² (0: off)"),
        "max_rate": Key(float, 0.01, "the spike rate per neuron and step above which a layer pays"),
        "layers": Key(tuple, [], 'the layers that pay, by name (e.g. ["conv1", "conv2", "conv3"]: the ones whose '
                                 'spikes cost the most synaptic ops); [] = every conv and dense layer'),
    },
    "teacher": {
        "epochs": Key(int, 12, "training epochs of the ANN teacher (trained once per run, by the first stage that distils)"),
        "seed": Key(int, 0, "seed of the teacher's init, shuffling and augmentation"),
        "consistency": Key(float, 0.0, "weight W of an AugMix-style consistency term in the teacher's loss: cross-entropy "
                                       "of each batch + W x the Jensen-Shannon divergence between its predictions on two "
                                       "independent photometric draws of the batch (0: off)"),
        "cells": Key(float, 0.0, "weight C of a term on where the teacher looks: + C x the share of conv1-conv3's "
                                 "activation energy outside the stained white cells (augment.cell_mask; 0: off)"),
    },
    "biases": {
        "means": Key(str, "batch", 'the batch-norm means that Lava and Loihi deploy as neuron biases: "batch" '
                                   '(batch means, re-estimated after each epoch), "fixed" (set once at their inference '
                                   'values over all training images, then held), "keep" (held at the init model\'s)'),
        "learn": Key(bool, False, "with held means: train them by gradient, like the weights"),
        "adam_eps": Key(float, 0.0, "with learn: Adam's epsilon for the biases alone (0: schedule.adam_eps)"),
    },
    "averaging": {
        "from_epoch": Key(int, 0, "from this epoch on, validate the running mean of the epoch-end weights (graded stages: and batch-norm statistics) and keep only such means (0: off)"),
    },
}
TOP = {"name": Key(str, "", "the recipe's name (default: the file's stem)"),
       "description": Key(str, "", "what the recipe trains")}
STAGE_TOP = {"name": Key(str, "", "the stage's name (default: stage1, stage2, ...)")}


def _check_value(where: str, key: Key, value: Any) -> Any:
    t = key.type
    if t is tuple:  # a list of names
        if not (isinstance(value, list) and all(isinstance(v, str) and v for v in value)):
            raise AllnetError(f"{where} = {value!r}: expected a list of names, e.g. [\"conv1\", \"conv2\"]")
        return list(value)
    if t is Ints:
        if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)):
            raise AllnetError(f"{where} = {value!r}: expected a list of positive integers, e.g. [1, 4, 4]")
        return list(value)
    if t is list:  # [low, high]
        ok = (isinstance(value, list) and len(value) == 2
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))
        if not ok:
            raise AllnetError(f"{where} = {value!r}: expected [low, high], two numbers")
        return [float(v) for v in value]
    if t is bool:
        ok = isinstance(value, bool)
    elif t is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif t is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        value = float(value) if ok else value
    else:
        ok = isinstance(value, str)
    if not ok:
        kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[t]
        raise AllnetError(f"{where} = {value!r}: expected {kind}")
    return value


def _sections(table: dict[str, Any], where: str, base: Path, allowed_top: dict[str, Key]) -> tuple[dict, dict]:
    """A recipe (or stage) table → (top-level scalars, {section: {key: value}}), checked against SCHEMA."""
    top, out = {}, {}

    def walk(prefix: str, tab: dict[str, Any]) -> None:
        for k, v in tab.items():
            name = f"{prefix}.{k}" if prefix else k
            if isinstance(v, dict):
                if name not in SCHEMA and not any(s.startswith(name + ".") for s in SCHEMA):
                    raise AllnetError(f"{where}: unknown section [{name}] (known: {', '.join(SCHEMA)})")
                walk(name, v)
                continue
            if not prefix:
                if k not in allowed_top:
                    raise AllnetError(f"{where}: unknown key {k!r} (top-level keys: {', '.join(allowed_top)}, then sections)")
                top[k] = _check_value(f"{where}: {k}", allowed_top[k], v)
                continue
            keys = SCHEMA.get(prefix)
            if keys is None or k not in keys:
                known = ", ".join(keys or ())
                raise AllnetError(f"{where}: unknown key {name!r}" + (f" (keys of [{prefix}]: {known})" if known else ""))
            v = _check_value(f"{where}: {name}", keys[k], v)
            if keys[k].path and v and (prefix, k, v) not in _SPECIAL:
                v = str((base / v).resolve()) if not Path(v).is_absolute() else v
            out.setdefault(prefix, {})[k] = v

    walk("", table)
    return top, out


_SPECIAL = {("data", "root", "synthetic"), ("schedule", "init", "scratch"), ("schedule", "init", "previous"),
            ("schedule", "init", "previous-export"), ("schedule", "init", "teacher")}


def parse_set(item: str) -> tuple[int | str | None, str, str, Any]:
    """``section.key=value`` or ``stages.N.section.key=value`` → (stage or None, section, key, value).
    The value is read as a TOML value (``3``, ``1e-3``, ``true``, ``"text"``); anything else is a string."""
    if "=" not in item:
        raise AllnetError(f"--set {item!r}: expected section.key=value, e.g. schedule.epochs=3")
    path, raw = item.split("=", 1)
    parts = path.strip().split(".")
    stage = None
    if parts[0] == "stages":
        if len(parts) < 4:
            raise AllnetError(f"--set {item!r}: expected stages.N.section.key=value (N: the stage's number or name)")
        stage = int(parts[1]) if parts[1].isdigit() else parts[1]
        parts = parts[2:]
    if len(parts) < 2:
        raise AllnetError(f"--set {item!r}: expected section.key=value, e.g. schedule.epochs=3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return stage, ".".join(parts[:-1]), parts[-1], value


def load(path: str | Path, sets: list[str] = ()) -> dict[str, Any]:
    """Read, check and resolve a recipe file: every stage with every key, paths absolute."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise AllnetError(f"recipe {path}: cannot read ({exc.strerror or exc})") from exc
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AllnetError(f"recipe {path}: not valid TOML ({exc})") from exc
    return resolve(doc, str(path), path.resolve().parent, sets, default_name=path.stem)


def resolve(doc: dict[str, Any], where: str, base: Path, sets: list[str] = (), default_name: str = "recipe") -> dict:
    doc = copy.deepcopy(doc)
    stages_doc = doc.pop("stages", None)
    if stages_doc is not None and (not isinstance(stages_doc, list) or not all(isinstance(s, dict) for s in stages_doc)):
        raise AllnetError(f"{where}: stages must be an array of tables ([[stages]])")
    top, common = _sections(doc, where, base, TOP)
    stage_tabs = stages_doc or [{}]
    resolved_stages = []
    for i, tab in enumerate(stage_tabs, start=1):
        s_top, s_secs = _sections(tab, f"{where}: stage {i}", base, STAGE_TOP)
        stage: dict[str, Any] = {"name": s_top.get("name") or (f"stage{i}" if stages_doc else "train")}
        for sec, keys in SCHEMA.items():
            stage[sec] = {k: key.default for k, key in keys.items()}
            stage[sec].update(common.get(sec, {}))
            stage[sec].update(s_secs.get(sec, {}))
        resolved_stages.append(stage)
    names = [s["name"] for s in resolved_stages]
    if len(set(names)) != len(names):
        raise AllnetError(f"{where}: stage names repeat ({', '.join(names)})")
    cwd = Path.cwd()
    for item in sets:
        which, sec, key, value = parse_set(item)
        if sec not in SCHEMA or key not in SCHEMA[sec]:
            raise AllnetError(f"--set {item}: unknown key {sec + '.' + key!r}"
                              + (f" (keys of [{sec}]: {', '.join(SCHEMA[sec])})" if sec in SCHEMA else f" (sections: {', '.join(SCHEMA)})"))
        k = SCHEMA[sec][key]
        value = _check_value(f"--set {sec}.{key}", k, value)
        if k.path and value and (sec, key, value) not in _SPECIAL and not Path(value).is_absolute():
            value = str((cwd / value).resolve())
        if which is None:
            targets = resolved_stages
        else:
            targets = [s for j, s in enumerate(resolved_stages, start=1) if which in (j, s["name"])]
            if not targets:
                raise AllnetError(f"--set {item}: no stage {which!r} (stages: {', '.join(names)})")
        for s in targets:
            s[sec][key] = value
    out = {"name": top.get("name") or default_name, "description": top.get("description", ""),
           "stages": resolved_stages}
    for i, s in enumerate(resolved_stages, start=1):
        compile_stage(s, i, where)  # every value checked now, not hours into the run
    return out


def model_config(stage: dict[str, Any], where: str = "recipe"):
    m = stage["model"]
    if m["name"] not in MODELS:
        raise AllnetError(f"{where}: model.name {m['name']!r}: one of {', '.join(sorted(MODELS))}")
    overrides = {k: m[k] for k in ("input_size", "time_steps") if m[k]}
    for k, v in overrides.items():
        if v < 1:
            raise AllnetError(f"{where}: model.{k} {v}: must be positive (0: the config's)")
    if m.get("input_once"):
        overrides["input_once"] = True
    if m.get("threshold_gains"):
        overrides["threshold_gains"] = tuple(m["threshold_gains"])
    if m.get("threshold"):
        if not m["threshold"] > 0:
            raise AllnetError(f"{where}: model.threshold {m['threshold']}: must be above 0 (0: the config's)")
        overrides["neuron"] = dataclasses.replace(MODELS[m["name"]].neuron, threshold=m["threshold"])
    fe = stage.get("frontend", {"name": "none"})
    if fe["name"] != "none" or fe.get("impulse") or fe.get("exclude_black"):
        from lava_allnet.frontend import FrontEnd

        try:
            overrides["frontend"] = FrontEnd(fe["name"], percentile=fe["percentile"],
                                             offset_bound=fe["offset_bound"], impulse=fe["impulse"],
                                             exclude_black=fe["exclude_black"]).to_json()
        except ValueError as exc:
            key = ("offset_bound" if "offset bound" in str(exc) else "impulse" if "impulse" in str(exc)
                   else "exclude_black" if "exclude_black" in str(exc) else "name")
            raise AllnetError(f"{where}: frontend.{key} {fe[key]!r}: {exc}") from exc
    try:
        return get_model_config(m["name"], **overrides)
    except ValueError as exc:
        raise AllnetError(f"{where}: model: {exc}") from exc


def compile_stage(stage: dict[str, Any], index: int, where: str = "recipe", run_dir: Path | None = None,
                  previous: Path | None = None):
    """One resolved stage → (ModelConfig, TrainConfig, data_dir or None, synthetic images per class)."""
    from training.config import TrainConfig

    where = f"{where}: stage {index} ({stage['name']})"
    model_cfg = model_config(stage, where)
    d, s, a, b = stage["data"], stage["schedule"], stage["augment"], stage["biases"]
    init = s["init"] or ("scratch" if index == 1 else "previous")
    if init in ("previous", "previous-export") and index == 1:
        raise AllnetError(f"{where}: schedule.init {init!r}: the first stage has no previous stage")
    init_from = ""
    if init == "previous":
        init_from = str(previous / "best.pt") if previous else "previous"
    elif init == "previous-export":
        init_from = str(previous / "model.net") if previous else "previous-export"
    elif init not in ("scratch", "teacher"):
        init_from = init
    split = d["split"]
    if not split and index > 1 and run_dir is not None:
        split = str(run_dir / "split.json")
    try:
        cfg = TrainConfig(
            epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], weight_decay=s["weight_decay"],
            adam_eps=s["adam_eps"], seed=s["seed"], threads=s["threads"], init_from=init_from,
            init_teacher=init == "teacher",
            val_fraction=d["val_fraction"], test_fraction=d["test_fraction"], split_from=split,
            augment=a["flips"], color_jitter=a["color_jitter"], loss_scale=stage["losses"]["logit_scale"],
            aug_gain=tuple(a["gain"]), aug_gamma=tuple(a["gamma"]), aug_contrast=a["contrast"], aug_stain=a["stain"],
            aug_hue=a["hue"], aug_noise=a["noise"], aug_blur=a["blur"], aug_occlusion=a["occlusion"],
            aug_background=a["background"], aug_background_black=a["background_black"],
            aug_background_recolour=a["background_recolour"], rate_weight=stage["losses.rate"]["weight"],
            rate_max=stage["losses.rate"]["max_rate"], rate_layers=tuple(stage["losses.rate"]["layers"]),
            range_weight=stage["losses.range"]["weight"], distill_weight=stage["losses.distill"]["weight"],
            distill_temperature=stage["losses.distill"]["temperature"],
            activations_weight=stage["losses.activations"]["weight"], teacher_epochs=stage["teacher"]["epochs"],
            teacher_seed=stage["teacher"]["seed"], teacher_consistency=stage["teacher"]["consistency"],
            teacher_cells=stage["teacher"]["cells"],
            teacher_path="../teacher.pt",
            norm_means=b["means"], learn_biases=b["learn"], bias_adam_eps=b["adam_eps"] or None,
            average_from=stage["averaging"]["from_epoch"], family=stage["model"]["family"],
            graded_threshold=stage["graded"]["threshold"])
    except ValueError as exc:
        raise AllnetError(f"{where}: {exc}") from exc
    root = d["root"]
    return model_cfg, cfg, (None if root == "synthetic" else root), d["synthetic_per_class"]


def to_toml(recipe: dict[str, Any]) -> str:
    """The resolved recipe as TOML (what ``--print-recipe`` shows and the run directory keeps)."""
    def val(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(json.dumps(x) if isinstance(x, str) else repr(x) for x in v) + "]"
        return repr(v)

    lines = [f"name = {val(recipe['name'])}", f"description = {val(recipe['description'])}"]
    for s in recipe["stages"]:
        lines += ["", "[[stages]]", f"name = {val(s['name'])}"]
        for sec in SCHEMA:
            lines += ["", f"[stages.{sec}]"] + [f"{k} = {val(v)}" for k, v in s[sec].items()]
    return "\n".join(lines) + "\n"


def stage_dirs(run_dir: Path, recipe: dict[str, Any]) -> list[Path]:
    return [run_dir / f"{i}-{s['name']}" for i, s in enumerate(recipe["stages"], start=1)]


def run(recipe: dict[str, Any], run_dir: str | Path, resume: bool = False, device: str | None = None, console=None,
        show_progress: bool = True, stop_after_batches: int | None = None) -> dict[str, Any]:
    """Train every stage of a resolved recipe into ``run_dir`` (or continue one); export each stage.

    Returns ``{"run_dir", "model", "stages": [{name, dir, best, epochs_done}]}``. A stage is done
    when its ``model.net`` exists; a killed run continues at the stage and batch it reached.
    """
    from netx.export import export
    from training import distributed
    from training.checkpoint import save_json
    from training.trainer import _console, load_trained, resolve_device, train

    console = console or _console()
    run_dir = Path(run_dir)
    resolve_device(device or "cpu")  # refused before anything is written
    if resume:
        if not (run_dir / "recipe.toml").exists():
            raise AllnetError(f"{run_dir}: nothing to resume (no recipe.toml)")
    else:
        if (run_dir / "recipe.toml").exists() or any(p.exists() for p in stage_dirs(run_dir, recipe)):
            raise AllnetError(f"{run_dir}: already holds a training run (use --resume, or another --out)")
        distributed.barrier()  # every rank has checked before rank 0 writes
        if distributed.is_main():
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "recipe.toml").write_text(to_toml(recipe))
    summary = {"recipe": recipe["name"], "stages": []}
    previous: Path | None = None
    data_dir: str | None = None
    for i, (stage, sdir) in enumerate(zip(recipe["stages"], stage_dirs(run_dir, recipe)), start=1):
        model_cfg, cfg, root, per_class = compile_stage(stage, i, str(run_dir / "recipe.toml"), run_dir, previous)
        if root is None:
            data_dir = data_dir or str(run_dir / "synthetic-data")
            with distributed.main_first():  # rank 0 generates the smears
                _generate(Path(data_dir), per_class, model_cfg.input_size, cfg.seed, console)
        done = sdir / "model.net"
        if done.exists():
            console.print(f"stage {i}/{len(recipe['stages'])} ({stage['name']}): done")
        else:
            console.print(f"[bold]stage {i}/{len(recipe['stages'])} ({stage['name']})[/]")
            started = (sdir / "config.json").exists()
            distributed.barrier()  # every rank knows whether the stage had started before rank 0 starts it
            metrics = train(sdir, model_cfg, cfg, data_dir=root or data_dir, synth_per_class=per_class,
                            resume=started, console=console, show_progress=show_progress,
                            stop_after_batches=stop_after_batches, device=device)
            if metrics.get("stopped"):
                return {"stopped": True, "stage": stage["name"], **metrics}
            if distributed.is_main():
                tmp = sdir / "model.net.tmp"
                export(load_trained(sdir), tmp)
                os.replace(tmp, done)
        if distributed.is_main() and i == 1 and not (run_dir / "split.json").exists():
            (run_dir / "split.json").write_bytes((sdir / "split.json").read_bytes())
        distributed.barrier()  # the stage's export and metrics are written
        m = json.loads((sdir / "metrics.json").read_text())
        summary["stages"].append({"name": stage["name"], "dir": sdir.name, "best": m["best"],
                                  "epochs_done": m["epochs_done"]})
        previous = sdir
    final = run_dir / "model.net"
    if distributed.is_main():
        tmp = run_dir / "model.net.tmp"
        tmp.write_bytes((previous / "model.net").read_bytes())
        os.replace(tmp, final)
    summary["model"] = str(final)
    if distributed.is_main():
        save_json(summary, run_dir / "metrics.json")
    return {"run_dir": str(run_dir), **summary}


def _generate(data_dir: Path, per_class: int, size: int, seed: int, console) -> None:
    """The synthetic smears of a run (once; a half-written folder from a killed run is redone)."""
    if data_dir.exists():
        return
    from lava_allnet.data import synth

    console.print(f"generating synthetic smears: {per_class} per class → {data_dir}")
    tmp = Path(str(data_dir) + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    synth.generate_dataset(tmp, per_class, size=size, seed=seed)
    os.replace(tmp, data_dir)


def last_stage_dir(run_dir: Path) -> Path | None:
    """The last stage directory of a recipe run that has a best.pt (for ``export RUN_DIR``)."""
    if not (run_dir / "recipe.toml").is_file():
        return None
    try:
        recipe = load(run_dir / "recipe.toml")
    except AllnetError:
        return None
    done = [d for d in stage_dirs(run_dir, recipe) if (d / "best.pt").exists()]
    return done[-1] if done else None


def read_run_recipe(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "recipe.toml"
    if not path.is_file():
        raise AllnetError(f"{run_dir}: nothing to resume (no recipe.toml)")
    return load(path)


__all__ = ["SCHEMA", "load", "resolve", "parse_set", "compile_stage", "to_toml", "run", "stage_dirs",
           "last_stage_dir", "read_run_recipe"]
