"""One self-contained HTML report of a model on a labelled dataset, for readers without a terminal.

Every figure is a PNG embedded as a ``data:`` URI and the style sheet is inline: the page needs
no network and no other file. :func:`html_report` only lays out what the analysis computed
(``lava_allnet.api.report`` computes it).
"""
from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any, Sequence

NOTICE = ("A research and screening aid, not a diagnostic device. Its outputs are not a diagnosis; every "
          "result, above all an abstention or an out-of-distribution warning, needs review by a qualified person.")

STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:70rem;color:#1b1b1b;
     line-height:1.45;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem} h2{font-size:1.2rem;border-bottom:1px solid #ccc;padding-bottom:.2rem;
     margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem} td,th{border:1px solid #ccc;padding:.25rem .6rem;
     text-align:right} th{background:#f2f2f2} td:first-child,th:first-child{text-align:left}
.notice{background:#fff3cd;border:1px solid #e0c060;padding:.7rem 1rem;border-radius:4px;font-weight:600}
.figs{display:flex;flex-wrap:wrap;gap:1rem} figure{margin:0} figcaption{font-size:.8rem;color:#555;max-width:32rem}
table.facts td{text-align:left} img{max-width:100%;border:1px solid #ddd} .muted{color:#666;font-size:.85rem}
"""


def png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{cls}"><tr>{head}</tr>{body}</table>' if cls else f"<table><tr>{head}</tr>{body}</table>"


def _figure(path: Path, caption: str, width: int | None = None) -> str:
    w = f' style="width:{width}px"' if width else ""
    return (f'<figure><img src="{png_uri(path)}" alt="{html.escape(caption)}"{w}>'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_report(facts: dict[str, Any], metrics: dict[str, Any], robustness: dict[str, Any] | None,
                profile: dict[str, Any], figures: dict[str, Path], robustness_figures: list[Path],
                gallery: list[dict[str, Any]]) -> str:
    """The page. ``figures``: confusion, reliability, risk_coverage, spikes, energy (PNG paths; the
    last three may be absent); ``gallery``: dicts with png, caption, kind ("error" or "correct")."""
    parts = [f"<h1>{html.escape(facts['title'])}</h1>",
             f'<p class="muted">{html.escape(facts["generated"])}</p>',
             f'<p class="notice">{html.escape(NOTICE)}</p>']

    parts.append("<h2>Model</h2>")
    parts.append(_table(["fact", "value"], [[k, v] for k, v in facts["model"].items()], "facts"))

    m = metrics
    parts.append("<h2>Metrics</h2>")
    parts.append(f"<p>{_fmt(m['n_images'])} images of <code>{html.escape(facts['data'])}</code>, backend "
                 f"{html.escape(facts['backend'])}.</p>")
    lo, hi = m["accuracy_ci95"]
    wlo, whi = m["accuracy_ci95_wilson"]
    rows = [["accuracy", m["accuracy"], f"{lo:.4f}-{hi:.4f} (bootstrap), {wlo:.4f}-{whi:.4f} (Wilson)"],
            ["balanced accuracy", m["balanced_accuracy"], ""], ["Cohen's kappa", m["cohen_kappa"], ""],
            ["Matthews correlation", m["mcc"], ""], ["macro F1", m["macro_f1"], ""]]
    if m.get("roc_auc_ovr"):
        rows.append(["ROC AUC (one-vs-rest, macro)", m["roc_auc_ovr"]["macro"], f"from {m['roc_auc_ovr']['scores']}"])
    if m.get("ece") is not None:
        rows.append(["expected calibration error (15 bins)", m["ece"], ""])
    sel = m.get("selective")
    if sel:
        rows += [["coverage (not abstained)", sel["coverage"], f"{sel['abstained']} abstained"],
                 ["accuracy on accepted images", sel["accepted_accuracy"], ""],
                 ["flagged out of distribution", sel["out_of_distribution_share"], f"{sel['out_of_distribution']} images"]]
    parts.append(_table(["measure", "value", "95% interval / note"], rows))
    auc = (m.get("roc_auc_ovr") or {}).get("per_class", {})
    parts.append(_table(["class", "precision", "recall", "F1", "support", "ROC AUC"],
                        [[c, v["precision"], v["recall"], v["f1"], v["support"], auc.get(c)]
                         for c, v in m["per_class"].items()]))
    figs = [_figure(figures["confusion"], "confusion matrix (rows: true class)", 420)]
    if "reliability" in figures:
        figs.append(_figure(figures["reliability"], "reliability: accuracy against confidence per bin", 400))
    if "risk_coverage" in figures:
        figs.append(_figure(figures["risk_coverage"], "risk-coverage: accuracy on the accepted images as fewer are accepted", 400))
    parts.append('<div class="figs">' + "".join(figs) + "</div>")

    parts.append("<h2>Robustness</h2>")
    if robustness is None:
        parts.append("<p>Not measured for this report.</p>")
    else:
        parts.append(f"<p>Accuracy under distortions at three severities, on {robustness['n_images']} of the images "
                     f"(evenly spaced); clean {robustness['clean']['accuracy']:.4f}.</p>")
        parts.append(_table(["distortion", "severity 1", "severity 2", "severity 3"],
                            [[k.replace("_", " "), *[f"{r['accuracy']:.4f} ({r['parameter']:g})" for r in rows_]]
                             for k, rows_ in robustness["distortions"].items()]))
        parts.append('<div class="figs">' + "".join(_figure(p, p.stem.replace("robustness_", "").replace("_", " "), 300)
                                                    for p in robustness_figures) + "</div>")

    parts.append("<h2>Activity and energy</h2>")
    t = profile["means"]["totals"]
    parts.append(f"<p>Means per image over {profile['n_images']} images, {profile['time_steps']} time steps; "
                 f"energy from {html.escape(profile['target_title'])} ({html.escape(profile['energy_source'])}).</p>")
    parts.append(_table(["layer", "neurons", "spikes / messages", "rate", "synaptic ops", "energy (µJ)"],
                        [[l["layer"], l["neurons"], l["messages"], l["rate"], l["synaptic_ops"],
                          None if l["energy_pj"] is None else l["energy_pj"] / 1e6] for l in profile["means"]["layers"]]))
    parts.append(_table(["total per image", "value"], [
        ["synaptic ops", t["synaptic_ops"]], ["synaptic ops per ANN MAC", t["synaptic_ops_per_ann_mac"]],
        ["energy on the chip (µJ)", None if t["energy_pj"] is None else t["energy_pj"] / 1e6],
        ["same-shaped ANN, MACs x 4.6 pJ (µJ)", t["ann_energy_pj"] / 1e6]]))
    parts.append('<div class="figs">' + "".join(_figure(figures[k], c, 460) for k, c in
                                                (("spikes", "spikes per layer"), ("energy", "energy per image"))
                                                if k in figures) + "</div>")

    parts.append("<h2>Grad-CAM</h2>")
    for kind, title in (("error", "Errors"), ("correct", "Most confident correct images")):
        items = [g for g in gallery if g["kind"] == kind]
        parts.append(f"<h3>{title}</h3>")
        parts.append("<p>None.</p>" if not items else
                     '<div class="figs">' + "".join(_figure(g["png"], g["caption"], 420) for g in items) + "</div>")

    parts.append(f'<p class="notice">{html.escape(NOTICE)}</p>')
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(facts['title'])}</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
