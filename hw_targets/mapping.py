"""How a network fits a neuromorphic target: cores per layer under the per-core limits.

Estimates, stated as such: a layer needs at least as many cores as each limit
implies (neurons per core, synaptic memory per core at 8 bits per stored
synapse, input axons per core for the layer's whole input). Limits that the
target's table leaves unpublished (null) are not applied, and say so.
"""
from __future__ import annotations

import math
from typing import Any

from netx import analysis
from netx import format as nf


def _ceil(a: float, b: float | None) -> int | None:
    return None if not b else max(1, math.ceil(a / b)) if a else 0


def map_network(spec: nf.NetworkSpec, target: dict[str, Any]) -> dict[str, Any]:
    core = target["core"]
    rows = []
    total_cores = 0
    needs_graded: list[str] = []
    prev_shape = spec.input.shape
    graded_in = True  # the image is a graded input
    for st, layer in zip(analysis.layer_stats(spec), spec.layers):
        if isinstance(layer, (nf.InputSpec, nf.FlattenSpec)):
            if isinstance(layer, nf.FlattenSpec):
                prev_shape = st.shape
            continue
        n_in = int(math.prod(prev_shape))
        syn_mem = st.synapses  # bytes at 8 bits per synapse
        by = {
            "neurons": _ceil(st.neurons, core.get("neurons")),
            "synaptic_memory": _ceil(syn_mem, core.get("synaptic_memory_bytes")),
            "fan_in_axons": _ceil(n_in, core.get("fan_in_axons")),
        }
        applied = {k: v for k, v in by.items() if v is not None}
        cores = max(applied.values()) if applied else 0
        graded = isinstance(layer, nf.SESpec) or graded_in
        if graded and not target.get("graded_spikes", False):
            needs_graded.append(layer.name)
        rows.append({
            "layer": layer.name,
            "type": layer.type,
            "neurons": st.neurons,
            "synapses": st.synapses,
            "max_fan_in": st.max_fan_in,
            "synaptic_memory_bytes": syn_mem,
            "input_neurons": n_in,
            "graded_messages": graded,
            "cores": cores,
            "cores_by_limit": by,
            "limiting": max(applied, key=applied.get) if applied else None,
        })
        total_cores += cores
        if isinstance(layer, nf.SESpec):
            graded_in = True
        elif isinstance(layer, (nf.ConvSpec, nf.DenseSpec)):
            graded_in = spec.graded  # a graded network's layers all send graded messages
            prev_shape = layer.shape
    chip = target["chip"]
    totals = analysis.totals(analysis.layer_stats(spec))
    problems = []
    if total_cores > chip["cores"]:
        problems.append(f"needs {total_cores} cores, the chip has {chip['cores']}")
    if chip.get("neurons") and totals["neurons"] > chip["neurons"]:
        problems.append(f"{totals['neurons']:,} neurons exceed the chip's {chip['neurons']:,}")
    if chip.get("synapses") and totals["synapses"] > chip["synapses"]:
        problems.append(f"{totals['synapses']:,} synapses exceed the chip's {chip['synapses']:,}")
    if needs_graded:
        problems.append(f"graded spikes required by {', '.join(needs_graded)} (not supported on {target['name']})")
    unapplied = [k for k, v in core.items() if v is None]
    return {
        "target": target["name"],
        "target_title": target["title"],
        "limits_source": target["limits_source"],
        "per_core_limits": core,
        "limits_not_published": unapplied,
        "layers": rows,
        "total_cores": total_cores,
        "chip_cores": chip["cores"],
        "total_neurons": totals["neurons"],
        "total_synapses": totals["synapses"],
        "fits_one_chip": not problems,
        "problems": problems,
        "notes": target.get("notes", []),
    }
