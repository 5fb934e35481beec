"""A bundle manifest's ``metrics`` block in a few human lines (status strip, PDF). Never hard-coded numbers."""
from __future__ import annotations

from typing import Any, Mapping

NO_METRICS_UNTRAINED = "no metrics: untrained"
NO_METRICS = "no metrics recorded in the bundle"


def _num(value: Any, digits: int = 3) -> str | None:
    return f"{float(value):.{digits}f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def metric_lines(metrics: Mapping[str, Any] | None, trained: bool) -> list[str]:
    """Test-set classification figures, detection mAP and the out-of-fold AUROC, as far as the manifest has
    them; ``["no metrics: untrained"]`` for an untrained bundle without metrics."""
    metrics = metrics or {}
    lines: list[str] = []
    test = metrics.get("test") or {}
    auroc = _num(test.get("auroc"))
    if auroc:
        ci = test.get("auroc_ci95") or [None, None]
        lo, hi = (_num(v) for v in (list(ci) + [None, None])[:2])
        text = f"test AUROC {auroc}" + (f" (95% CI {lo}-{hi})" if lo and hi else "")
        n, pos = test.get("n"), test.get("n_abnormal")
        if isinstance(n, int):
            text += f", n = {n}" + (f" ({pos} abnormal)" if isinstance(pos, int) else "")
        lines.append(text)
        parts = [f"{label} {_num(test.get(key))}" for key, label in
                 (("sensitivity", "sensitivity"), ("specificity", "specificity"), ("f1", "F1"),
                  ("average_precision", "AP")) if _num(test.get(key))]
        if parts:
            gate = _num(test.get("gate"))
            lines.append(", ".join(parts) + (f" at gate {gate}" if gate else ""))
    det = metrics.get("detection") or {}
    if _num(det.get("map50")):
        lines.append(f"detector mAP@0.5 {_num(det['map50'])}"
                     + (f", mAP@0.5:0.95 {_num(det['map50_95'])}" if _num(det.get("map50_95")) else ""))
    sel = metrics.get("selection") or {}
    if _num(sel.get("oof_auroc")):
        lines.append(f"out-of-fold AUROC {_num(sel['oof_auroc'])}")
    if not lines:
        lines.append(NO_METRICS_UNTRAINED if not trained else NO_METRICS)
    return lines
