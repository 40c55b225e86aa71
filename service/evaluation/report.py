"""report.html: one self-contained page (inline CSS, inline base64 PNG figures) people can mail around.

Tables follow the papers' layout (Özer & Öksüz 2021 Table 2, Özer et al. 2023 Tables 2–5): one row per
saliency method, one column per model — plus, when several checkpoints of one architecture were evaluated,
their mean ± std, and the Difference of Means when two architectures were. ``render_comparison`` puts several
runs side by side (columns = smoothing / randomisation settings). Figures are drawn with matplotlib's
object API (no pyplot global state, safe in a server process).
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from models.controls import get_control
from models.evaluation import CONTROL_METHODS, RANDOMISED_INITS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;
color:#1b1f24;padding:0 1rem;line-height:1.45}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2rem;border-bottom:1px solid #d0d7de;padding-bottom:.2rem}
table{border-collapse:collapse;margin:.6rem 0 1rem;font-variant-numeric:tabular-nums}
th,td{border:1px solid #d0d7de;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}thead th{background:#f6f8fa}
tr.control td{color:#57606a;font-style:italic}td.best{font-weight:700}
.meta{color:#57606a;font-size:.92rem}.note{color:#57606a;font-size:.88rem;max-width:60rem}
.case{margin:1rem 0;padding:.5rem;border:1px solid #d0d7de;border-radius:6px}
.case h3{margin:.2rem 0 .4rem;font-size:1rem}.case img{max-width:100%}
code{background:#f6f8fa;padding:0 .25rem;border-radius:3px}
"""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _png(fig: Figure) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def html_page(title: str, body: str) -> str:
    """A self-contained page with the report's style around ``body`` (HTML)."""
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title>"
        f"<style>{_CSS}</style></head><body>{body}</body></html>"
    )


def ordered_methods(methods: Sequence[str]) -> list[str]:
    """Saliency methods in their given order, controls last."""
    return [m for m in methods if m not in CONTROL_METHODS] + [m for m in methods if m in CONTROL_METHODS]


# A randomised model whose classifier AUC is further than this from 0.5 fails the sanity check (flagged).
SANITY_AUC_MARGIN = 0.1


def tolerance_text(results: dict[str, Any]) -> str:
    """The tolerance as a caption states it: the fraction of the grid side and the pixels it makes."""
    models = results.get("models", {})
    per_model = sorted(
        {
            (v.get("tau_rel"), v.get("tau_px"), "×".join(str(s) for s in v.get("input_size", [])))
            for v in models.values()
        }
    )
    known = [(r, px, grid) for r, px, grid in per_model if r is not None and px is not None]
    if not known:  # results written before tau_rel existed: pixels only
        return f"τ = {results.get('params', {}).get('tau') or 15:g} px"
    parts = [f"τ = {100 * r:.3g} % of the grid side = {px:.3g} px on the {grid} grid" for r, px, grid in known]
    return "; ".join(parts)


def _controls_note(methods: Sequence[str]) -> str:
    controls = [m for m in methods if m in CONTROL_METHODS]
    if not controls:
        return ""
    listed = "; ".join(f"<em>{_esc(m)}</em>: {_esc(get_control(m).summary)}" for m in controls)
    return (
        " Rows in grey italics are model-free <em>controls</em> (computed from the image alone, never from a "
        f"model), shown so that a saliency method can be told apart from image processing: {listed}."
    )


def _sanity_section(results: dict[str, Any]) -> str:
    """The classifier AUC of every randomised model: a randomised model must not classify (AUC ≈ 0.5)."""
    models = results.get("models", {})
    randomised = sorted(k for k, v in models.items() if v.get("init") in RANDOMISED_INITS)
    if not randomised:
        return ""
    rows = []
    for key in randomised:
        entry = results.get("classification", {}).get(key, {})
        auc = entry.get("auc")
        ok = auc is not None and abs(auc - 0.5) <= SANITY_AUC_MARGIN
        verdict = (
            "–"
            if auc is None
            else ("≈ 0.5" if ok else f"<strong>not ≈ 0.5 (|AUC − 0.5| > {SANITY_AUC_MARGIN:g})</strong>")
        )
        rows.append(
            f"<tr><td>{_esc(key)}</td><td>{_esc(models[key].get('init'))}</td><td>{_esc(models[key].get('seed'))}</td>"
            f"<td>{_fmt(auc)}</td><td>{verdict}</td></tr>"
        )
    return (
        "<h2>Randomisation sanity check</h2><p class='note'>A randomised model (re-initialised head or network) "
        "should not classify: its ROC AUC on these images should be near 0.5. A model far from it is not the "
        "random reference the randomisation tables assume.</p>"
        "<table><thead><tr><th>model</th><th>init</th><th>seed</th><th>ROC AUC</th><th>check</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _metric_table(results: dict[str, Any], metric: str, title_note: str, with_counts: bool = False) -> str:
    methods = ordered_methods(list(results["methods"]))
    models = sorted({m for per in results["methods"].values() for m in per})
    repeated = results.get("repeated", {})
    group_archs = sorted({a for per in repeated.values() for a in per})
    dom = results.get("dom", {}) if metric == "pointing_game" else {}
    head = ["method"] + models + ([f"{a} mean ± std" for a in group_archs] if metric == "pointing_game" else [])
    if dom:
        archs = results.get("dom_architectures", [])
        head.append(f"DoM ({' vs '.join(archs)})" if archs else "DoM")
    # Best value per column among saliency methods (controls never win), bold like the papers.
    best: dict[str, float] = {}
    for model in models:
        values = [results["methods"][m].get(model, {}).get(metric) for m in methods if m not in CONTROL_METHODS]
        values = [v for v in values if v is not None]
        if values:
            best[model] = max(values)
    lines = ["<table><thead><tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for method_id in methods:
        control = method_id in CONTROL_METHODS
        label = f"{method_id} (control)" if control else method_id
        cells = [f"<td>{_esc(label)}</td>"]
        for model in models:
            entry = results["methods"][method_id].get(model, {})
            value = entry.get(metric)
            text = _fmt(value)
            if with_counts and entry.get("n") is not None and value is not None:
                text += f" <span class='meta'>({entry['hits']}/{entry['n']})</span>"
            cls = " class='best'" if (not control and value is not None and best.get(model) == value) else ""
            cells.append(f"<td{cls}>{text}</td>")
        if metric == "pointing_game":
            for arch in group_archs:
                g = repeated.get(method_id, {}).get(arch)
                cells.append(f"<td>{_fmt(g['mean'])} ± {_fmt(g['std'])}</td>" if g else "<td>–</td>")
        if dom:
            cells.append(f"<td>{_fmt(dom.get(method_id))}</td>")
        lines.append(f"<tr{' class=control' if control else ''}>" + "".join(cells) + "</tr>")
    lines.append("</tbody></table>")
    return f"<p class='note'>{title_note}</p>" + "\n".join(lines)


def _bar_chart(results: dict[str, Any]) -> str:
    """Pointing Game per method; error bars = std over repeated models, else the binomial standard error."""
    from matplotlib.figure import Figure

    methods = ordered_methods(list(results["methods"]))
    models = sorted({m for per in results["methods"].values() for m in per})
    repeated = results.get("repeated", {})
    archs_grouped = sorted({a for per in repeated.values() for a in per})
    if archs_grouped:
        series = []
        for arch in archs_grouped:
            means = [repeated.get(m, {}).get(arch, {}).get("mean") for m in methods]
            stds = [repeated.get(m, {}).get(arch, {}).get("std") for m in methods]
            series.append((f"{arch} (mean ± std)", means, stds))
    else:
        series = []
        for model in models:
            vals, errs = [], []
            for m in methods:
                e = results["methods"][m].get(model, {})
                p, n = e.get("pointing_game"), e.get("n") or 0
                vals.append(p)
                errs.append(math.sqrt(p * (1 - p) / n) if p is not None and n else None)
            series.append((f"{model} (± binomial s.e.)", vals, errs))
    fig = Figure(figsize=(max(6.0, 0.65 * len(methods) * max(1, len(series)) + 2), 4.2))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(1, len(series))
    x = np.arange(len(methods))
    for k, (label, vals, errs) in enumerate(series):
        v = np.array([np.nan if a is None else a for a in vals], dtype=float)
        e = np.array([0.0 if a is None else a for a in errs], dtype=float)
        ax.bar(x + (k - (len(series) - 1) / 2) * width, v, width, yerr=e, capsize=3, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(
        [f"{m}\n(control)" if m in CONTROL_METHODS else m for m in methods], rotation=35, ha="right", fontsize=8
    )
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("Pointing Game accuracy")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return _png(fig)


def _case_figure(case: dict[str, Any]) -> str:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    panels = case["panels"]
    fig = Figure(figsize=(2.3 * (len(panels) + 1), 2.6))
    ax = fig.add_subplot(1, len(panels) + 1, 1)
    ax.imshow(case["gray"], cmap="gray", vmin=0, vmax=1)
    for x1, y1, x2, y2 in case["boxes"]:
        ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.2))
    ax.set_title("image + boxes", fontsize=8)
    ax.axis("off")
    for k, panel in enumerate(panels, start=2):
        ax = fig.add_subplot(1, len(panels) + 1, k)
        ax.imshow(case["gray"], cmap="gray", vmin=0, vmax=1)
        m = panel["map"]
        span = float(m.max() - m.min())
        ax.imshow((m - m.min()) / span if span > 0 else np.zeros_like(m), cmap="jet", alpha=0.45, vmin=0, vmax=1)
        for x1, y1, x2, y2 in case["boxes"]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1.0))
        px, py = panel["point"]
        ax.plot([px], [py], marker="x", color="white", markersize=8, mew=2)
        ax.set_title(panel["method"], fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    return _png(fig)


def _gallery(cases: list[dict[str, Any]], tolerance: str) -> str:
    if not cases:
        return (
            "<p class='note'>No gallery: no image with a box was evaluated, or (after a merge) the models "
            "and images were not reachable to redraw the maps.</p>"
        )
    parts = [
        f"<p class='note'>Best (hits with the most saliency inside the boxes) and worst (misses with the "
        f"least) images for <code>{_esc(cases[0]['primary_method'])}</code> on model "
        f"<code>{_esc(cases[0]['model'])}</code>; every evaluated method's map for the same image. Green: "
        f"ground-truth boxes; ×: the map's maximum (a hit when within {_esc(tolerance)} of a box).</p>"
    ]
    for case in cases:
        verdict = "hit" if case["hit"] else "miss"
        parts.append(
            f"<div class='case'><h3>{_esc(case['kind'])}: {_esc(case['image'])} — {verdict}, energy "
            f"{_fmt(case['energy_pg'])}, P(positive) {_fmt(case['probability'])}</h3>"
            f"<img alt='saliency maps for {_esc(case['image'])}' src='{_case_figure(case)}'></div>"
        )
    return "\n".join(parts)


def render_report(results: dict[str, Any], rows: list[dict[str, Any]], gallery: list[dict[str, Any]]) -> str:
    params = results.get("params", {})
    counts = results.get("counts", {})
    run = results.get("run", {})
    models = results.get("models", {})
    model_lines = "".join(
        f"<li><code>{_esc(k)}</code>: {_esc(v.get('arch'))} {_esc(v.get('name'))} v{_esc(v.get('version'))}, "
        f"input {_esc('×'.join(str(s) for s in v.get('input_size', [])))}, init {_esc(v.get('init'))}"
        f"{', seed ' + _esc(v.get('seed')) if v.get('init') != 'trained' else ''}</li>"
        for k, v in sorted(models.items())
    )
    classification = "".join(
        f"<tr><td>{_esc(k)}</td><td>{_fmt(v.get('accuracy'))}</td><td>{_fmt(v.get('auc'))}</td>"
        f"<td>{v.get('n')}</td><td>{v.get('n_positive')}</td></tr>"
        for k, v in sorted(results.get("classification", {}).items())
    )
    elapsed = run.get("elapsed_s")
    merged = run.get("merged_from")
    sections = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>NormGate Pointing Game report</title><style>{_CSS}</style></head><body>",
        "<h1>Pointing Game report</h1>",
        f"<p class='meta'>data <code>{_esc(params.get('data'))}</code> split <code>{_esc(params.get('split'))}"
        f"</code> · {counts.get('images', 0)} images, {counts.get('images_with_boxes', 0)} with boxes · "
        f"{_esc(tolerance_text(results))} · smoothing σ = {params.get('smooth_sigma', 0):g} · init "
        f"<code>{_esc(params.get('init'))}</code> · NormGrad combine <code>{_esc(params.get('combine'))}</code>"
        f" · map post-processing <code>{_esc(params.get('postprocess', 'none'))}</code>"
        f" · path baseline <code>{_esc(params.get('path_baseline', 'zero'))}</code>"
        + (f" · {elapsed:.1f} s" if elapsed is not None else "")
        + (f" · merged from {len(merged)} shards" if merged else "")
        + "</p>",
        f"<ul class='meta'>{model_lines}</ul>",
        "<h2>Pointing Game</h2>",
        _metric_table(
            results,
            "pointing_game",
            "Accuracy = hits / (hits + misses) over images with at least one box: a hit when the map's "
            f"maximum lies within {_esc(tolerance_text(results))} (model input grid) of the nearest ground-truth "
            "box. Bold: best saliency method per model." + _controls_note(list(results["methods"])),
            with_counts=True,
        ),
        f"<img alt='Pointing Game bar chart' src='{_bar_chart(results)}'>",
        "<h2>Energy-based Pointing Game</h2>",
        _metric_table(
            results,
            "energy_pg",
            "Mean share of the saliency mass inside the boxes (Score-CAM's energy-based Pointing Game), same images.",
        ),
        "<h2>FROC (Object-CXR challenge metric)</h2>",
        _metric_table(
            results,
            "froc",
            "Each image's map maximum, mapped to original pixels and scored with the "
            "model's probability, is one point prediction; an object is detected when a point lies in "
            "its annotation shape. Mean sensitivity at 0.125, 0.25, 0.5, 1, 2, 4, 8 false positives per "
            "image (one point per image never reaches more than 1 FP per image; higher rates take the "
            "final sensitivity).",
        ),
        "<h2>Classification</h2>",
        "<table><thead><tr><th>model</th><th>accuracy</th><th>ROC AUC</th><th>images</th><th>positives</th>"
        f"</tr></thead><tbody>{classification}</tbody></table>",
        _sanity_section(results),
        "<h2>Best and worst cases</h2>",
        _gallery(gallery, tolerance_text(results)),
        "</body></html>",
    ]
    return "\n".join(sections)


def render_comparison(runs: Sequence[tuple[str, dict[str, Any]]], metric: str = "pointing_game") -> str:
    """Several runs side by side (e.g. trained / semi-random / full-random, σ 0 / 1): rows = methods,
    one column per (run, model); a run's repeated models show as mean ± std."""
    methods: list[str] = []
    for _, res in runs:
        for m in res["methods"]:
            if m not in methods:
                methods.append(m)
    methods = ordered_methods(methods)
    columns: list[tuple[str, dict[str, Any], str | None]] = []
    for label, res in runs:
        if res.get("repeated"):
            for arch in sorted({a for per in res["repeated"].values() for a in per}):
                columns.append((f"{label} · {arch}", res, arch))
        else:
            for model in sorted({k for per in res["methods"].values() for k in per}):
                columns.append((f"{label} · {model}", res, None))
    head = "".join(f"<th>{_esc(c[0])}</th>" for c in columns)
    body = []
    for m in methods:
        cells = []
        for label, res, arch in columns:
            if arch is not None:
                g = res.get("repeated", {}).get(m, {}).get(arch)
                cells.append(f"<td>{_fmt(g['mean'])} ± {_fmt(g['std'])}</td>" if g else "<td>–</td>")
            else:
                model = label.split(" · ", 1)[1]
                entry = res["methods"].get(m, {}).get(model, {})
                counts = (
                    f" <span class='meta'>({entry['hits']}/{entry['n']})</span>"
                    if (metric == "pointing_game" and entry.get("n"))
                    else ""
                )
                cells.append(f"<td>{_fmt(entry.get(metric))}{counts}</td>")
        body.append(f"<tr><td>{_esc(m + (' (control)' if m in CONTROL_METHODS else ''))}</td>{''.join(cells)}</tr>")
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>NormGate comparison</title>"
        f"<style>{_CSS}</style></head><body><h1>Comparison: {_esc(metric)}</h1>"
        f"<table><thead><tr><th>method</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
        "</body></html>"
    )
