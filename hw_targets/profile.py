"""Activity profile and energy proxies of a Run, from per-stage counts and target tables.

Per image and stage:
  messages      spikes (binary stages) or non-zero graded messages
  rate          messages / (neurons * T): spikes per neuron per step
  synaptic_ops  each message times its fan-out (synapses it drives)
  neuron_updates neurons * T (every compartment updates every step)
  active        neurons that sent at least one message
Energy (targets with published per-op energies, e.g. loihi1):
  synaptic_ops * E_syn + messages * (E_active + E_spike) + (updates - messages) * E_inactive
Conventional comparison: the same network as an ANN does ann_macs (one pass) at
4.6 pJ/MAC, against the SNN's synaptic ops at the 0.9 pJ accumulate convention.

Implicit stages: each SE gate's relay neurons (their messages mirror the
gated layer's spikes, one per hop) and the always-firing bias neuron are
added as rows so that nothing that costs energy is left out.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lava_allnet.errors import AllnetError
from lava_allnet.result import Run
from netx import analysis
from netx import format as nf

TARGETS_DIR = Path(__file__).resolve().parent / "targets"
TARGETS = ("loihi1", "loihi2")


def load_target(name: str) -> dict[str, Any]:
    path = TARGETS_DIR / f"{name}.json"
    if not path.exists():
        known = sorted(p.stem for p in TARGETS_DIR.glob("*.json") if p.stem != "conventional")
        raise AllnetError(f"unknown target {name!r}; known: {', '.join(known)}")
    return json.loads(path.read_text())


def conventional() -> dict[str, Any]:
    return json.loads((TARGETS_DIR / "conventional.json").read_text())


@dataclass
class StageRows:
    """Per-image arrays for every stage (explicit and implicit)."""

    names: list[str]
    neurons: dict[str, int]
    messages: dict[str, np.ndarray]  # (N,)
    per_step: dict[str, np.ndarray]  # (N, T)
    synops: dict[str, np.ndarray]  # (N,)
    active: dict[str, np.ndarray]  # (N,)


def _rows(spec: nf.NetworkSpec, run: Run) -> StageRows:
    T = spec.time_steps
    n = len(run.results)
    neurons = analysis.stage_neurons(spec)
    names = list(run.stage_names)
    messages = {k: v.sum(1) for k, v in run.stage_steps.items()}
    per_step = dict(run.stage_steps)
    synops = {k: run.stage_weighted[k].sum(1) if k in run.stage_weighted else np.zeros(n, np.int64) for k in names}
    active = {k: run.stage_active.get(k, np.zeros(n, np.int64)) for k in names}
    out_names: list[str] = []
    for name in names:
        out_names.append(name)
        layer = next((l for l in spec.layers if isinstance(l, nf.SESpec) and name == f"{l.name}.scale"), None)
        if layer is None:
            continue
        # relays: two GradedVec hops re-send the gated layer's spikes, fan-out 1 each
        src = layer.name.replace("se", "conv", 1)  # an SE gate is named after the conv it follows
        rname = f"{layer.name}.relay"
        out_names.insert(len(out_names) - 3, rname)  # before squeeze/excite/scale
        neurons[rname] = analysis.se_relay_neurons(layer)
        messages[rname] = 2 * messages[src]
        per_step[rname] = 2 * per_step[src]
        synops[rname] = 2 * messages[src]
        active[rname] = 2 * active[src]
    if any(isinstance(l, nf.SESpec) for l in spec.layers):
        out_names.append("bias")
        neurons["bias"] = 1
        messages["bias"] = np.full(n, T, np.int64)
        per_step["bias"] = np.ones((n, T), np.int64)
        synops["bias"] = np.full(n, T * analysis.bias_fanout(spec), np.int64)
        active["bias"] = np.ones(n, np.int64)
    return StageRows(out_names, neurons, messages, per_step, synops, active)


def profile(spec: nf.NetworkSpec, run: Run, target: dict[str, Any], images: bool = True) -> dict[str, Any]:
    """The full report (JSON-ready): per image (``images``), totals, means, timing, energy.

    The figures are computed per layer over all images at once (arrays); the per-image entries,
    which hold every layer's per-step counts, are built only with ``images`` (``--json``, ``--out``),
    so a plain profile of many images keeps no per-image detail."""
    T = spec.time_steps
    rows = _rows(spec, run)
    conv = conventional()
    e = target.get("energy_pj")
    ann_macs = analysis.totals(analysis.layer_stats(spec))["ann_macs"]
    n = len(run.results)
    layers: dict[str, dict[str, Any]] = {}  # per layer: per-image arrays (N,)
    for name in rows.names:
        nrn = rows.neurons.get(name, 0)
        upd = nrn * T
        msg = np.asarray(rows.messages[name], dtype=np.int64)
        col: dict[str, Any] = {"neurons": nrn, "neuron_updates": np.full(n, upd, np.int64), "messages": msg,
                               "synaptic_ops": np.asarray(rows.synops[name], dtype=np.int64),
                               "active_neurons": np.asarray(rows.active[name], dtype=np.int64),
                               "rate": msg / upd if upd else None, "energy_pj": None}
        if e is not None:
            active_upd = np.minimum(msg, upd)
            col["energy_pj"] = (col["synaptic_ops"] * e["synaptic_op"]
                                + active_upd * (e["neuron_update_active"] + e["spike_within_tile"])
                                + (upd - active_upd) * e["neuron_update_inactive"])
        layers[name] = col

    def layer_sum(key: str) -> np.ndarray:
        total: Any = 0
        for col in layers.values():  # layer by layer, as a sum over an image's rows would add them
            total = total + col[key]
        return np.broadcast_to(np.asarray(total), (n,))

    synops = layer_sum("synaptic_ops")
    totals: dict[str, Any] = {
        "messages": layer_sum("messages"), "synaptic_ops": synops, "neuron_updates": layer_sum("neuron_updates"),
        "active_neurons": layer_sum("active_neurons"), "energy_pj": layer_sum("energy_pj") if e is not None else None,
        "snn_synops_energy_pj": synops * conv["snn_synaptic_op_pj"],
        "ann_macs": np.full(n, ann_macs, np.int64), "ann_energy_pj": np.full(n, ann_macs * conv["ann_mac_pj"]),
        "synaptic_ops_per_ann_mac": synops / ann_macs if ann_macs else None,
    }
    per_image = [_image_entry(r, i, rows, layers, totals) for i, r in enumerate(run.results)] if images else None

    def mean(values) -> float | None:
        return None if values is None else float(np.mean(values))

    layer_means = [{
        "layer": name,
        "neurons": col["neurons"],
        **{k: mean(col[k]) for k in ("messages", "synaptic_ops", "neuron_updates", "active_neurons")},
        "rate": mean(col["rate"]),
        "energy_pj": mean(col["energy_pj"]),
        "per_step": [float(x) for x in np.mean(rows.per_step[name], axis=0)],
    } for name, col in layers.items()]
    timing = run.timing
    return {
        "backend": run.backend,
        "target": target["name"],
        "target_title": target["title"],
        "energy_source": target["energy_source"],
        "conventional_source": conv["source"],
        "time_steps": T,
        "n_images": n,
        "timing": {
            "ms_per_step": timing.get("ms_per_step"),
            "ms_per_image": timing.get("ms_per_image"),
            "compile_s": timing.get("compile_s"),
        },
        "means": {
            "layers": layer_means,
            "totals": {k: mean(totals[k]) for k in ("messages", "synaptic_ops", "neuron_updates", "active_neurons",
                                                      "energy_pj", "snn_synops_energy_pj", "ann_energy_pj",
                                                      "synaptic_ops_per_ann_mac")},
        },
        "totals": {k: None if totals[k] is None else float(sum(totals[k].tolist()))
                   for k in ("messages", "synaptic_ops", "neuron_updates", "energy_pj")},
        "ann_macs_per_image": ann_macs,
        **({"images": per_image} if images else {}),
    }


def _image_entry(r, i: int, rows: StageRows, layers: dict[str, dict[str, Any]], totals: dict[str, Any]) -> dict[str, Any]:
    """One image's entry of the report: its rows per layer (with per-step counts) and its totals."""
    def value(x, cast):
        return None if x is None else cast(x[i])

    return {
        "path": r.path,
        "prediction": r.prediction,
        "label": r.label,
        "layers": [{
            "layer": name,
            "neurons": col["neurons"],
            "messages": int(col["messages"][i]),
            "rate": value(col["rate"], float),
            "synaptic_ops": int(col["synaptic_ops"][i]),
            "neuron_updates": int(col["neuron_updates"][i]),
            "active_neurons": int(col["active_neurons"][i]),
            "per_step": [int(v) for v in rows.per_step[name][i]],
            **({} if col["energy_pj"] is None else {"energy_pj": float(col["energy_pj"][i])}),
        } for name, col in layers.items()],
        "totals": {k: value(totals[k], int if k in ("messages", "synaptic_ops", "neuron_updates", "active_neurons",
                                                     "ann_macs") else float)
                   for k in ("messages", "synaptic_ops", "neuron_updates", "active_neurons", "energy_pj",
                             "snn_synops_energy_pj", "ann_macs", "ann_energy_pj", "synaptic_ops_per_ann_mac")},
    }


def write_outputs(report: dict[str, Any], out_dir: Path) -> list[Path]:
    """profile.csv (per image and layer, when the report has its images), profile.json and three PNG plots."""
    from lava_allnet.plotting import pyplot, save

    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    if "images" in report:
        csv_path = out_dir / "profile.csv"
        with open(csv_path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image", "prediction", "label", "layer", "neurons", "messages", "rate", "synaptic_ops",
                        "neuron_updates", "active_neurons", "energy_pj"])
            for im in report["images"]:
                for l in im["layers"]:
                    w.writerow([im["path"], im["prediction"], im["label"] or "", l["layer"], l["neurons"],
                                l["messages"], "" if l["rate"] is None else f"{l['rate']:.6f}", l["synaptic_ops"],
                                l["neuron_updates"], l["active_neurons"],
                                "" if l.get("energy_pj") is None else f"{l['energy_pj']:.1f}"])
        written.append(csv_path)
    js = out_dir / "profile.json"
    js.write_text(json.dumps(report, indent=1))
    written.append(js)

    layers = report["means"]["layers"]
    names = [l["layer"] for l in layers]
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names)), 4))
    ax.bar(names, [l["messages"] for l in layers], color="#5b6fb5")
    ax.set_yscale("log")
    ax.set_ylabel("spikes / messages per image (mean)")
    ax.set_title(f"activity per layer ({report['backend']}, {report['n_images']} images, T={report['time_steps']})")
    ax.tick_params(axis="x", rotation=60)
    written.append(save(fig, out_dir / "spikes_per_layer.png"))

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for l in layers:
        if l["neurons"]:
            ax.plot(range(1, report["time_steps"] + 1), np.asarray(l["per_step"]) / l["neurons"], marker="o", ms=3, label=l["layer"])
    ax.set_xlabel("time step (within the image's window)")
    ax.set_ylabel("messages per neuron")
    ax.set_title("activity over time steps")
    ax.legend(fontsize=7, ncol=2)
    written.append(save(fig, out_dir / "activity_over_time.png"))

    t = report["means"]["totals"]
    bars = {"ANN (MACs x 4.6 pJ)": t["ann_energy_pj"], "SNN (syn. ops x 0.9 pJ)": t["snn_synops_energy_pj"]}
    if t["energy_pj"] is not None:
        bars[f"SNN on {report['target']} (Davies 2018)"] = t["energy_pj"]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.bar(list(bars), [v / 1e6 for v in bars.values()], color=["#999999", "#5b6fb5", "#2e8b57"][: len(bars)])
    ax.set_ylabel("energy per image (µJ)")
    ax.set_title("energy proxy per image")
    ax.tick_params(axis="x", labelsize=8)
    written.append(save(fig, out_dir / "energy_snn_vs_ann.png"))
    return written
