"""The training report: ``metrics.json``, ``report.md``, ``report.html`` and PNG plots in one folder.

Markdown and HTML are rendered from the same list of blocks, so both always say the same thing. Plots use
matplotlib's Agg backend (no display needed).
"""
from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from spine_ui._io import atomic_write_json, atomic_write_text
from spine_ui.train.metrics import auroc, average_precision, pr_curve, roc_curve

DISCLAIMER = ("Research use only; not a medical device. Figures on synthetic data say nothing about clinical "
              "performance.")


# --------------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_roc(labels: Sequence[int], scores: Mapping[str, Sequence[float]], path: Path, title: str,
             gate: tuple[str, float] | None = None) -> Path | None:
    """ROC curves of several score sets on the same labels; marks the operating point at the gate."""
    y = np.asarray(labels)
    if y.min() == y.max():
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    for name, s in scores.items():
        fpr, tpr, _ = roc_curve(y, s)
        ax.plot(fpr, tpr, lw=2 if name == "ensemble" else 1.2, label=f"{name} (AUROC {auroc(y, s):.3f})")
    if gate is not None:
        name, g = gate
        s = np.asarray(scores[name])
        tpr = float(np.mean(s[y == 1] >= g))
        fpr = float(np.mean(s[y == 0] >= g))
        ax.plot([fpr], [tpr], "ko", ms=6, label=f"gate {g:.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return _save(plt, fig, path)


def plot_pr(labels: Sequence[int], scores: Mapping[str, Sequence[float]], path: Path, title: str) -> Path | None:
    """Precision-recall curves with AP per score set; None without positives."""
    y = np.asarray(labels)
    if y.sum() == 0:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 5.0), dpi=110)
    for name, s in scores.items():
        precision, recall, _ = pr_curve(y, s)
        ax.step(recall, precision, where="post", lw=2 if name == "ensemble" else 1.2,
                label=f"{name} (AP {average_precision(y, s):.3f})")
    ax.axhline(float(y.mean()), ls="--", c="0.6", lw=1, label=f"prevalence {y.mean():.2f}")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)
    ax.legend(loc="lower left", fontsize=8)
    return _save(plt, fig, path)


def plot_ap_bars(per_class: Mapping[str, Mapping[str, float]], path: Path, title: str) -> Path | None:
    """Per-class AP@0.5 and AP@0.5:0.95 bars; None without classes."""
    if not per_class:
        return None
    plt = _pyplot()
    names = list(per_class)
    ap50 = [per_class[n]["ap50"] for n in names]
    ap = [per_class[n]["ap50_95"] for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(names)), 4.0), dpi=110)
    ax.bar(x - 0.2, ap50, 0.4, label="AP@0.5")
    ax.bar(x + 0.2, ap, 0.4, label="AP@0.5:0.95")
    ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    ax.set(ylim=(0, 1), ylabel="AP", title=title)
    ax.legend(fontsize=8)
    return _save(plt, fig, path)


# --------------------------------------------------------------------------- rendering
Block = tuple  # ("h", level, text) | ("p", text) | ("table", headers, rows) | ("img", file, alt) | ("list", items)


def fmt(v: Any, digits: int = 3) -> str:
    """A table cell: fixed decimals for floats, "–" for missing or undefined values."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return "–" if not math.isfinite(float(v)) else f"{float(v):.{digits}f}"
    return str(v)


def to_markdown(blocks: Sequence[Block]) -> str:
    """Render report blocks as Markdown."""
    out = []
    for b in blocks:
        if b[0] == "h":
            out.append("#" * b[1] + " " + b[2])
        elif b[0] == "p":
            out.append(b[1])
        elif b[0] == "list":
            out.append("\n".join(f"- {item}" for item in b[1]))
        elif b[0] == "table":
            headers, rows = b[1], b[2]
            lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
            lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |" for r in rows]
            out.append("\n".join(lines))
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]})")
    return "\n\n".join(out) + "\n"


def to_html(blocks: Sequence[Block], title: str) -> str:
    """Render report blocks as a self-contained HTML page (values escaped)."""
    e = html.escape
    body = []
    for b in blocks:
        if b[0] == "h":
            body.append(f"<h{b[1]}>{e(b[2])}</h{b[1]}>")
        elif b[0] == "p":
            body.append(f"<p>{e(b[1])}</p>")
        elif b[0] == "list":
            body.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "table":
            head = "".join(f"<th>{e(str(h))}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif b[0] == "img":
            body.append(f'<figure><img src="{e(b[1])}" alt="{e(b[2])}"><figcaption>{e(b[2])}</figcaption></figure>')
    style = ("body{font-family:system-ui,sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;"
             "padding:3px 8px;text-align:right}th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}"
             "figure{display:inline-block;margin:0.5em}img{max-width:460px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{e(title)}</title><style>{style}</style>"
            f"</head><body>{''.join(body)}</body></html>\n")


def _json_default(o: Any):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def clean_json(obj: Any) -> Any:
    """NaN/inf -> None (strict JSON), numpy -> Python."""
    if isinstance(obj, dict):
        return {str(k): clean_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_json(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.ndarray):
        return clean_json(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _ci(d: Mapping | None) -> str:
    if not d or d.get("low") is None or not math.isfinite(d.get("low", float("nan"))):
        return "–"
    return f"{d['low']:.3f}–{d['high']:.3f}"


def _threshold_rows(table: Sequence[Mapping]) -> list[list[str]]:
    return [[fmt(r["threshold"]) + (" (gate)" if r.get("is_gate") else ""), fmt(r["sensitivity"]),
             fmt(r["specificity"]), fmt(r["ppv"]), fmt(r["npv"]), fmt(r["f1"]), fmt(r["accuracy"]),
             f"{r['tp']}/{r['fp']}/{r['tn']}/{r['fn']}"] for r in table]


THRESHOLD_HEADERS = ["threshold", "sensitivity", "specificity", "PPV", "NPV", "F1", "accuracy", "TP/FP/TN/FN"]


def build_blocks(results: Mapping[str, Any], plots: Mapping[str, str]) -> list[Block]:
    """The report's headings, paragraphs, tables and images from the results dict."""
    b: list[Block] = [("h", 1, f"Training report: {results.get('name', '')}"), ("p", DISCLAIMER)]
    data = results.get("data", {})
    b.append(("p", f"Data: {data.get('n_train', '?')} training images ({data.get('train_abnormal', '?')} abnormal, "
                   f"{data.get('train_studies', '?')} studies), {data.get('n_test', '?')} test images "
                   f"({data.get('test_abnormal', '?')} abnormal){' - synthetic' if data.get('synthetic') else ''}."))
    b.append(("p", results.get("protocol", "")))
    sel = results.get("selection", {})
    b.append(("h", 2, "Ensemble weights and gate"))
    b.append(("p", f"Source: {sel.get('source', '?')}. Gate {fmt(sel.get('gate'), 4)}."))
    rows = [[a, fmt(w, 2), fmt(sel.get("per_model_oof_auroc", {}).get(a))] for a, w in sel.get("weights", {}).items()]
    b.append(("table", ["model", "weight", "OOF AUROC"], rows))
    if sel.get("source") == "cross-validation":
        b.append(("p", f"OOF ensemble AUROC {fmt(sel.get('oof_auroc'))} with the selected weights, "
                       f"{fmt(sel.get('oof_auroc_default_weights'))} with the default weights; "
                       f"{sel.get('candidates')} candidates, {sel.get('ties')} tied at the best AUROC."))
    test = results.get("test")
    if test:
        ens = test["ensemble"]
        b.append(("h", 2, "Test split (held out)"))
        rows = [["ensemble", fmt(ens.get("auroc")), _ci(ens.get("auroc_ci")), fmt(ens.get("average_precision"))]]
        for a, m in test.get("per_model", {}).items():
            rows.append([a, fmt(m.get("auroc")), _ci(m.get("auroc_ci")), fmt(m.get("average_precision"))])
        ci = (ens.get("auroc_ci") or {}).get("ci", 0.95)
        b.append(("table", ["model", "AUROC", f"{int(round(ci * 100))}% CI (bootstrap)", "AP"], rows))
        g = ens["at_gate"]
        b.append(("p", f"At the gate {fmt(ens['gate'], 4)}: sensitivity {fmt(g['sensitivity'])}, specificity "
                       f"{fmt(g['specificity'])}, F1 {fmt(g['f1'])} (n = {ens['n']}, {ens['n_abnormal']} abnormal)."))
        b.append(("table", THRESHOLD_HEADERS, _threshold_rows(ens["threshold_table"])))
    for key, alt in (("roc_test", "ROC, test split"), ("pr_test", "Precision-recall, test split"),
                     ("roc_oof", "ROC, out-of-fold (train split)"), ("pr_oof", "Precision-recall, out-of-fold")):
        if plots.get(key):
            b.append(("img", plots[key], alt))
    oof = results.get("oof")
    if oof:
        b.append(("h", 2, "Out-of-fold (cross-validation on the train split)"))
        b.append(("p", f"AUROC {fmt(oof.get('auroc'))} ({_ci(oof.get('auroc_ci'))}); selection data, "
                       "optimistic by construction."))
        b.append(("table", THRESHOLD_HEADERS, _threshold_rows(oof["threshold_table"])))
    det = results.get("detection")
    b.append(("h", 2, "Lesion detector"))
    if not det or det.get("skipped"):
        b.append(("p", f"Not evaluated: {det.get('skipped') if det else 'the detect stage did not run'}."))
    else:
        b.append(("p", f"{det.get('source')}: mAP@0.5 {fmt(det.get('map50'))}, mAP@0.5:0.95 "
                       f"{fmt(det.get('map50_95'))} on {det.get('n_images')} test images (imgsz {det.get('imgsz')})."))
        own = det.get("own_check", {})
        rows = [[name, fmt(v["ap50"]), fmt(v["ap50_95"]), fmt(own.get("per_class", {}).get(name, {}).get("ap50"))]
                for name, v in det.get("per_class", {}).items()]
        b.append(("table", ["class", "AP@0.5", "AP@0.5:0.95", "AP@0.5 (own)"], rows))
        if own:
            b.append(("p", f"Cross-check ({own.get('source')}): mAP@0.5 {fmt(own.get('map50'))}, "
                           f"mAP@0.5:0.95 {fmt(own.get('map50_95'))}."))
        if plots.get("ap_test"):
            b.append(("img", plots["ap_test"], "Per-class AP, test split"))
    measures = results.get("yolo_imbalance")
    if measures:
        b.append(("h", 3, "Class-imbalance measures (detector)"))
        b.append(("list", [f"{m['measure']}: {'applied' if m['applied'] else 'not applied'} - {m['note']}"
                           for m in measures]))
    tr = results.get("training")
    if tr:
        b.append(("h", 2, "Training"))
        rows = []
        for a, t in tr.items():
            rows.append([a, t.get("pretrained"), t.get("final"), fmt(t.get("final_epochs")),
                         ", ".join(str(e) for e in t.get("fold_best_epochs", [])),
                         ", ".join(fmt(s) for s in t.get("fold_val_auroc", []))])
        b.append(("table", ["model", "ImageNet init", "final model", "final epochs", "fold best epochs",
                            "fold val AUROC"], rows))
    timings = results.get("timings")
    if timings:
        b.append(("table", ["stage", "seconds"], [[k, fmt(v, 1)] for k, v in timings.items()]))
    return b


def write_report(out_dir: Path, results: Mapping[str, Any], curves: Mapping[str, Mapping[str, Any]]) -> dict:
    """Write plots, ``metrics.json``, ``report.md`` and ``report.html`` into ``out_dir``.

    ``curves``: {"test": {"labels": y, "scores": {name: s}, "gate": g}, "oof": {...}} (either may be absent).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots: dict[str, str] = {}
    for split in ("test", "oof"):
        c = curves.get(split)
        if not c:
            continue
        gate = ("ensemble", c["gate"]) if "ensemble" in c["scores"] and c.get("gate") is not None else None
        title = "test split" if split == "test" else "out-of-fold"
        p = plot_roc(c["labels"], c["scores"], out_dir / f"roc_{split}.png", f"ROC, {title}", gate)
        if p:
            plots[f"roc_{split}"] = p.name
        p = plot_pr(c["labels"], c["scores"], out_dir / f"pr_{split}.png", f"Precision-recall, {title}")
        if p:
            plots[f"pr_{split}"] = p.name
    det = results.get("detection") or {}
    if det.get("per_class"):
        p = plot_ap_bars(det["per_class"], out_dir / "ap_test.png", "Detector, test split")
        if p:
            plots["ap_test"] = p.name
    payload = clean_json({**results, "plots": plots})
    atomic_write_json(out_dir / "metrics.json", payload, default=_json_default)
    blocks = build_blocks(results, plots)
    atomic_write_text(out_dir / "report.md", to_markdown(blocks))
    atomic_write_text(out_dir / "report.html", to_html(blocks, f"Training report: {results.get('name', '')}"))
    return {"metrics": out_dir / "metrics.json", "markdown": out_dir / "report.md", "html": out_dir / "report.html",
            "plots": {k: out_dir / v for k, v in plots.items()}}
