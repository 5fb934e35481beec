"""Analysis -> HTML fragments, tables and pictures for the UI. Pure functions, no gradio import.

Every string that can come from an upload (gate reasons quote DICOM tags, processing notes quote the VOI LUT
function, error messages) goes through ``html.escape`` before it is put into HTML.
"""
from __future__ import annotations

import html
from typing import Any, Iterable, Sequence

import numpy as np

from spine_ui.config import LESION_CLASSES, display_name
from spine_ui.core.detect import Lesion
from spine_ui.core.finding import DISCLAIMER, UNTRAINED_WARNING, Finding
from spine_ui.core.gate import LayerResult
from spine_ui.core.overlays import colour_hex, draw_lesions, heatmap_overlay, lime_overlay

ARCH_NAMES: dict[str, str] = {
    "densenet121": "DenseNet-121",
    "tf_efficientnetv2_s": "EfficientNetV2-S",
    "resnet50": "ResNet-50",
}
FUSED = "fused"
TABLE_HEADERS = ["Lesion", "Confidence", "Box x0, y0, x1, y1 (px)"]


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def arch_name(arch: str) -> str:
    return ARCH_NAMES.get(arch, arch)


def _pct(p: float) -> str:
    return f"{100.0 * min(max(float(p), 0.0), 1.0):.2f}%"


# --------------------------------------------------------------------------- page furniture
def banner_html(info: dict[str, Any]) -> str:
    """The persistent red banner for untrained bundles ('' for trained ones)."""
    if info.get("trained"):
        return ""
    rest = UNTRAINED_WARNING.split(":", 1)[1].strip() if ":" in UNTRAINED_WARNING else UNTRAINED_WARNING
    rest = rest[:1].upper() + rest[1:]
    return ('<div class="sx-banner" role="alert"><span class="sx-banner-icon" aria-hidden="true">&#9888;</span>'
            '<div><strong>UNTRAINED MODEL WEIGHTS - results carry no meaning.</strong> '
            f'{esc(rest)} Do not use these results for any decision.</div></div>')


def status_html(info: dict[str, Any]) -> str:
    trained = bool(info.get("trained"))
    state = ('<span class="sx-pill sx-pill-ok">trained</span>' if trained
             else '<span class="sx-pill sx-pill-bad">UNTRAINED</span>')
    return ('<div class="sx-status">'
            f'<span><b>Runtime</b> {esc(info.get("runtime", "?"))}</span>'
            f'<span><b>Model bundle</b> {esc(info.get("name", "?"))} v{esc(info.get("version", "?"))}</span>'
            f'<span><b>Weights</b> {state}</span>'
            f'<span class="sx-metrics"><b>Metrics</b> {esc("; ".join(info.get("metrics") or ["no metrics recorded"]))}'
            '</span></div>')


def disclaimer_html() -> str:
    return f'<div class="sx-disclaimer">{esc(DISCLAIMER)}</div>'


def footer_html(source_url: str | None = None) -> str:
    src = (f' Source code: <a href="{esc(source_url)}" target="_blank" rel="noopener">{esc(source_url)}</a>.'
           if source_url else " The complete source code is available to every user of this service.")
    return ('<div class="sx-footer">SpineXR Triage - free software under the '
            '<a href="https://www.gnu.org/licenses/agpl-3.0.html" target="_blank" rel="noopener">GNU AGPL-3.0</a>.'
            f'{src} Uploads are read into memory and deleted; no image is stored. The review database keeps'
            ' findings (without patient identity), review marks, worklists and an audit trail.</div>')


def placeholder_html() -> str:
    return ('<div class="sx-placeholder">Upload a spine radiograph (DICOM, PNG, JPEG, TIFF or BMP) or pick an example. '
            'The triage result appears first; lesion boxes and explanations follow.</div>')


def working_html(text: str) -> str:
    return f'<div class="sx-placeholder sx-working">{esc(text)}</div>'


# --------------------------------------------------------------------------- triage
def triage_html(finding: Finding) -> str:
    """Verdict, ensemble probability bar with the gate marked, and each model's probability and weight."""
    p, gate = float(finding.probability), float(finding.gate)
    abnormal = bool(finding.abnormal)
    verdict = "ABNORMAL" if abnormal else "NORMAL"
    detail = ("at or above the gate: lesion detection and explanations follow" if abnormal
              else "below the gate: no lesion detection by default")
    rows = []
    for m in finding.models:
        rows.append(
            '<div class="sx-model">'
            f'<span class="sx-model-name">{esc(arch_name(m.arch))} <code>{esc(m.arch)}</code></span>'
            f'<span class="sx-model-weight">weight {float(m.weight):.2f}</span>'
            f'<span class="sx-minibar"><span class="sx-minifill" style="width:{_pct(m.probability)}"></span>'
            f'<span class="sx-minigate" style="left:{_pct(gate)}"></span></span>'
            f'<span class="sx-model-p">{float(m.probability):.3f}</span></div>')
    layers = gate_layers_html(finding.gate_layers)
    checks = f'<details class="sx-checks"><summary>Input checks</summary>{layers}</details>' if layers else ""
    untrained = ('<div class="sx-inline-warn">Untrained weights: this number is noise, not a finding.</div>'
                 if not finding.trained else "")
    return (
        f'<div class="sx-triage {"sx-abnormal" if abnormal else "sx-normal"}">'
        '<div class="sx-head">'
        f'<span class="sx-verdict">{verdict}</span>'
        f'<span class="sx-prob">P(abnormal) = <b>{p:.3f}</b> &middot; gate {gate:.3f}</span></div>'
        f'<div class="sx-sub">Ensemble probability {detail}.</div>'
        f'{calibration_html(finding)}'
        f'<div class="sx-bar" role="img" aria-label="ensemble probability {p:.3f}, gate {gate:.3f}">'
        f'<span class="sx-fill" style="width:{_pct(p)}"></span>'
        f'<span class="sx-gate" style="left:{_pct(gate)}"><span class="sx-gate-label">gate {gate:.3f}</span></span>'
        '</div>'
        '<div class="sx-scale"><span>0</span><span>0.5</span><span>1</span></div>'
        '<div class="sx-models-title">Ensemble members (weighted soft vote, test-time augmentation)</div>'
        f'<div class="sx-models">{"".join(rows)}</div>'
        f'{untrained}{image_notes_html(finding)}{checks}</div>')


def calibration_html(finding: Finding) -> str:
    """Says whether P(abnormal) is a calibrated probability (and the plain vote beside it) or a raw score."""
    if finding.calibrated:
        raw = finding.probability_uncalibrated
        tail = f"; uncalibrated soft vote {float(raw):.3f}" if raw is not None else ""
        return (f'<div class="sx-calibration">Calibrated probability (bundle calibration; gate on the same '
                f'scale{tail}).</div>')
    return ('<div class="sx-calibration">Not calibrated: the soft vote of the members, a score rather than a '
            'frequency of abnormal studies.</div>')


def checks_html(finding: Finding) -> str:
    """The explanation checks (faithfulness, LIME stability, Grad-CAM mass per lesion box) in one sentence."""
    c = finding.checks
    if c is None:
        return ""
    parts = []
    for name, curve in (("Grad-CAM", c.gradcam), ("LIME", c.lime)):
        if curve is not None:
            parts.append(f"{name} deletion {curve.deletion_faithfulness:+.2f} / insertion "
                         f"{curve.insertion_faithfulness:+.2f}")
    text = ""
    if parts:
        text += ("Faithfulness (area under P(abnormal) as the most salient superpixels are removed / inserted, "
                 "compared with random order; &gt; 0: the marked regions matter more than random ones): "
                 + ", ".join(parts) + ". ")
    if c.lime_stability is not None and np.isfinite(c.lime_stability):
        text += f"LIME stability across two seeds (Spearman) {c.lime_stability:.2f}. "
    ratios = [f"{r:.1f}&times;" for r in c.lesions if np.isfinite(r)]
    if ratios:
        text += f"Grad-CAM mass in each lesion box relative to its area share: {', '.join(ratios)}. "
    return f'<div class="sx-checks-note">Checks: {text}Sanity checks, not proof.</div>' if text else ""


def image_notes_html(finding: Finding) -> str:
    img = finding.image
    if img is None:
        return ""
    parts = [f"{int(img.width)} x {int(img.height)} px", "DICOM" if img.source == "dicom" else "raster"]
    parts.extend(str(v) for v in (img.photometric, img.transfer_syntax) if v)
    if img.bits_stored:
        parts.append(f"{int(img.bits_stored)}-bit")
    parts.extend(f"{label} {v}" for label, v in (("modality", img.modality), ("view", img.view_position),
                                                   ("body part", img.body_part)) if v)
    parts.extend(str(n) for n in img.processing)
    return f'<div class="sx-notes">Input: {esc(" | ".join(parts))}</div>{timings_html(finding)}'


def timings_html(finding: Finding) -> str:
    """Stage timings of this analysis (ms), in pipeline order."""
    t = finding.timings_ms
    if not t:
        return ""
    parts = [f"{k} {v:.0f} ms" for k, v in t.items()]
    return f'<div class="sx-notes sx-timings">Stage timings: {esc(" | ".join(parts))} (total {sum(t.values()):.0f} ms)</div>'


def viewer_note(finding: Finding) -> str:
    """One line above the viewer: what is shown and what is still to come."""
    if finding.verdict == "abnormal":
        return "Abnormal: boxes and explanations can be overlaid (toggles on the right)."
    if finding.detector_ran or finding.gradcam:
        return "Below the gate; detector / explanations were requested and can be overlaid."
    return "Below the gate: shown without overlays (use 'Explain anyway' or 'Always run' for boxes and maps)."


def gate_layers_html(layers: Iterable[LayerResult]) -> str:
    items = []
    for layer in layers:
        cls = {"passed": "ok", "rejected": "bad"}.get(layer.status, "skip")
        items.append(f'<li class="sx-layer-{cls}"><b>{esc(layer.name)}</b> {esc(layer.status)}: '
                     f'{esc(layer.detail)}</li>')
    return f'<ul class="sx-layers">{"".join(items)}</ul>' if items else ""


def error_html(title: str, message: str, layers: Iterable[LayerResult] = ()) -> str:
    checks = gate_layers_html(layers)
    checks = f'<details><summary>Input checks</summary>{checks}</details>' if checks else ""
    return (f'<div class="sx-error" role="alert"><div class="sx-error-title">{esc(title)}</div>'
            f'<div class="sx-error-msg">{esc(message)}</div>{checks}'
            '<div class="sx-error-hint">No model output is shown for this file.</div></div>')


# --------------------------------------------------------------------------- lesions
def legend_html(lesions: Sequence[Lesion] | None) -> str:
    """Swatches for all lesion classes, with the number of boxes of each class found in this study."""
    counts: dict[str, int] = {}
    for les in lesions or ():
        counts[les.label] = counts.get(les.label, 0) + 1
    items = []
    for label in LESION_CLASSES:
        n = counts.get(label, 0)
        items.append(f'<span class="sx-legend-item{" sx-present" if n else ""}">'
                     f'<span class="sx-swatch" style="background:{colour_hex(label)}"></span>'
                     f'{esc(display_name(label))}{f" <b>x{n}</b>" if n else ""}</span>')
    if lesions is None:
        note = "Detector not run."
    elif not lesions:
        note = "No lesion above the detector's confidence threshold."
    else:
        note = f"{len(lesions)} box{'es' if len(lesions) != 1 else ''} detected."
    return (f'<div class="sx-legend"><div class="sx-legend-title">Box colours - {esc(note)}</div>'
            f'{"".join(items)}</div>')


def lesion_rows(lesions: Sequence[Lesion] | None) -> list[list[Any]]:
    return [[les.name, round(float(les.confidence), 3), ", ".join(f"{v:.0f}" for v in les.box)]
            for les in (lesions or ())]


def lesion_image(enhanced: np.ndarray, lesions: Sequence[Lesion], original_shape: tuple[int, int]) -> np.ndarray:
    return draw_lesions(enhanced, lesions, original_shape)


# --------------------------------------------------------------------------- explanations
def cam_choices(per_model: Iterable[str]) -> list[tuple[str, str]]:
    return [("Ensemble (fused)", FUSED)] + [(arch_name(a), a) for a in per_model]


def cam_image(enhanced: np.ndarray, cam, choice: str = FUSED) -> np.ndarray:
    heat = cam.per_model.get(choice, cam.fused) if choice != FUSED else cam.fused
    return heatmap_overlay(enhanced, heat)


def lime_image(enhanced: np.ndarray, lime) -> np.ndarray:
    return lime_overlay(enhanced, lime.weights)


def explain_note_html(finding: Finding, lime_pending: bool, checks_pending: bool = False) -> str:
    parts = []
    if finding.gradcam:
        parts.append(f"Grad-CAM ({esc(finding.gradcam)}): warm colours mark regions that raise P(abnormal).")
    if finding.lime:
        parts.append(f"LIME ({int(finding.lime.samples)} samples, local fit R&sup2; {float(finding.lime.score):.2f}): "
                     "red superpixels support abnormal, blue oppose it.")
    elif lime_pending:
        parts.append("LIME is running (it perturbs superpixels and re-scores the ensemble; slowest step).")
    if checks_pending and finding.checks is None:
        parts.append("Explanation checks are running.")
    if not parts and finding.checks is None:
        return ""
    return f'<div class="sx-notes">{" ".join(parts)}{checks_html(finding)}</div>'


__all__ = ["ARCH_NAMES", "FUSED", "TABLE_HEADERS", "arch_name", "banner_html", "calibration_html", "cam_choices",
           "cam_image", "checks_html", "disclaimer_html", "error_html", "esc", "explain_note_html", "footer_html",
           "gate_layers_html", "legend_html", "lesion_image", "lesion_rows", "lime_image", "placeholder_html",
           "status_html", "triage_html", "working_html"]
