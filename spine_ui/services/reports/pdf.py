"""The printable report of one study (fpdf2): verdict against the gate, each member's probability, the lesion
table, the overlay pictures, the bundle with its metrics, stage timings and the research-use notice.

No patient identifiers and no file name: everything comes from the :class:`~spine_ui.core.finding.Finding` (which
has none) and from pictures of the image itself. Core PDF fonts only (Latin-1), so the text is searchable.
"""
from __future__ import annotations

import io
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import cv2
import numpy as np
from fpdf import FPDF
from fpdf.enums import XPos, YPos
from PIL import Image

from spine_ui.config import display_name
from spine_ui.core.finding import DISCLAIMER, UNTRAINED_WARNING, Finding
from spine_ui.services.reports.metrics import metric_lines

if TYPE_CHECKING:
    from spine_ui.core.pipeline import Analysis

TITLE = "SpineXR Triage - study report"
PICTURE_SIDE = 900  # long side (px) of each embedded picture
_ARCH = {"densenet121": "DenseNet-121", "tf_efficientnetv2_s": "EfficientNetV2-S", "resnet50": "ResNet-50"}
_RED, _BLACK, _GREY = (170, 20, 20), (0, 0, 0), (90, 90, 90)


def _t(text: Any) -> str:
    """Latin-1 safe text for the core fonts (anything else becomes '?')."""
    return str(text).replace("\u2265", ">=").replace("\u2264", "<=").encode("latin-1", "replace").decode("latin-1")


class _Report(FPDF):
    def footer(self) -> None:
        self.set_y(-12)
        self.set_font("Helvetica", "", 7)
        self.set_text_color(*_GREY)
        self.cell(0, 5, _t(f"Research use only - not a medical device.   Page {self.page_no()}/{{nb}}"), align="C")


def verdict_line(f: Finding) -> str:
    """The headline: verdict, probability and the gate it was compared with."""
    if not f.accepted:
        return f"REJECTED - not analysed: {f.reason or 'the image was rejected'}"
    if f.probability is None:
        return "ACCEPTED - triage not run"
    side = ">=" if f.abnormal else "<"
    return f"{(f.verdict or '').upper()} - P(abnormal) = {f.probability:.3f} {side} gate {f.gate:g}"


def report_pictures(a: "Analysis") -> list[tuple[str, np.ndarray]]:
    """The overlay pictures (``spine_ui.core.overlays``) of an analysis; the windowed study when rejected."""
    from spine_ui.core.display import apply_window
    from spine_ui.core.overlays import draw_lesions, gray_to_rgb, heatmap_overlay, lime_overlay

    if not a.accepted or a.triage is None or a.enhanced is None:
        if a.display is not None:
            p = a.display.presets[0]
            return [(f"Study ({p.name.lower()})", gray_to_rgb(apply_window(a.display, p.center, p.width)))]
        return [("Working image", gray_to_rgb(np.uint8(np.clip(a.enhanced, 0, 1) * 255)))] if a.enhanced is not None else []
    work = a.enhanced
    title = "Working image with lesion boxes" if a.detection is not None else "Working image (detector not run)"
    out = [(title, draw_lesions(work, a.lesions or (), a.study.shape))]
    if a.cam is not None:
        out.append(("Grad-CAM (fused)", heatmap_overlay(work, a.cam.fused)))
    if a.lime is not None:
        out.append((f"LIME ({a.lime.n_samples} samples)", lime_overlay(work, a.lime.weights)))
    return out


def _jpeg(rgb: np.ndarray) -> tuple[io.BytesIO, float]:
    arr = rgb if rgb.dtype == np.uint8 else np.uint8(np.clip(rgb, 0, 1) * 255)
    h, w = arr.shape[:2]
    scale = PICTURE_SIDE / max(h, w)
    if scale < 1.0:
        arr = cv2.resize(np.ascontiguousarray(arr), (max(1, round(w * scale)), max(1, round(h * scale))),
                         interpolation=cv2.INTER_AREA)
    buf = io.BytesIO()
    Image.fromarray(arr).convert("RGB").save(buf, format="JPEG", quality=85)
    buf.seek(0)
    return buf, h / w


def build_pdf(f: Finding, pictures: Sequence[tuple[str, np.ndarray]], metrics: Mapping[str, Any] | None,
              generated: datetime | None = None) -> bytes:
    """The PDF bytes of one study's report."""
    pdf = _Report(orientation="P", unit="mm", format="A4")
    pdf.set_title(TITLE)
    pdf.set_creator("SpineXR Triage")
    pdf.set_auto_page_break(True, margin=16)
    pdf.set_margins(14, 12, 14)
    pdf.add_page()
    when = (generated or datetime.now(timezone.utc)).strftime("%Y-%m-%d %H:%M UTC")
    _heading(pdf, TITLE, 15)
    _text(pdf, f"Generated {when} by the bundle {f.bundle.name} v{f.bundle.version} on {f.runtime}.", size=8,
          colour=_GREY)
    _notice(pdf, f)
    _heading(pdf, "Result", 11)
    pdf.set_font("Helvetica", "B", 13)
    pdf.set_text_color(*(_RED if f.abnormal or not f.accepted else _BLACK))
    pdf.multi_cell(0, 7, _t(verdict_line(f)), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(*_BLACK)
    if f.models:
        _table(pdf, ["Model", "Weight", "P(abnormal)", "TTA views"],
               [[_ARCH.get(m.arch, m.arch), f"{m.weight:g}", f"{m.probability:.3f}",
                 " ".join(f"{v:.2f}" for v in m.views)] for m in f.models], (50, 22, 30, 80))
    if f.accepted and f.probability is not None:
        _lesions(pdf, f)
    _pictures(pdf, pictures)
    _details(pdf, f, metrics)
    return bytes(pdf.output())


def _heading(pdf: FPDF, text: str, size: float) -> None:
    pdf.set_font("Helvetica", "B", size)
    pdf.set_text_color(*_BLACK)
    pdf.cell(0, size * 0.55, _t(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(1)


def _text(pdf: FPDF, text: str, size: float = 9, colour=_BLACK, style: str = "") -> None:
    pdf.set_font("Helvetica", style, size)
    pdf.set_text_color(*colour)
    pdf.multi_cell(0, size * 0.5, _t(text), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(*_BLACK)


def _notice(pdf: FPDF, f: Finding) -> None:
    pdf.set_draw_color(*_RED)
    pdf.set_fill_color(253, 236, 236)
    pdf.set_font("Helvetica", "B", 8.5)
    pdf.set_text_color(*_RED)
    body = DISCLAIMER + ("\n" + UNTRAINED_WARNING if not f.trained else "")
    pdf.multi_cell(0, 4.5, _t(body), border=1, fill=True, padding=1.5, new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_text_color(*_BLACK)
    pdf.ln(2)


def _table(pdf: FPDF, headers: Sequence[str], rows: Sequence[Sequence[str]], widths: Sequence[float]) -> None:
    pdf.set_font("Helvetica", "", 8.5)
    with pdf.table(col_widths=tuple(widths), width=sum(widths), align="LEFT", line_height=5,
                   text_align="LEFT", first_row_as_headings=True) as table:
        for row in [headers, *rows]:
            r = table.row()
            for cell in row:
                r.cell(_t(cell))
    pdf.ln(2)


def _lesions(pdf: FPDF, f: Finding) -> None:
    _heading(pdf, "Lesions (YOLO11-L)", 10)
    if not f.detector_ran:
        _text(pdf, "Detector not run (the study is below the gate and detection was not requested).")
    elif not f.lesions:
        _text(pdf, "The detector found no lesion above its confidence threshold.")
    else:
        _table(pdf, ["Lesion", "Confidence", "Box x0, y0, x1, y1 (original px)"],
               [[display_name(l.label), f"{l.confidence:.2f}", ", ".join(f"{v:.0f}" for v in l.box)]
                for l in f.lesions], (60, 25, 80))


def _pictures(pdf: FPDF, pictures: Sequence[tuple[str, np.ndarray]]) -> None:
    if not pictures:
        return
    gap, avail = 4.0, pdf.w - pdf.l_margin - pdf.r_margin
    width = (avail - gap * (len(pictures) - 1)) / len(pictures)
    encoded = [(title, *_jpeg(rgb)) for title, rgb in pictures]
    max_h = 110.0
    height = min(max_h, max(width * ratio for _, _, ratio in encoded))
    if pdf.get_y() + height + 10 > pdf.h - pdf.b_margin:
        pdf.add_page()
    y = pdf.get_y()
    pdf.set_font("Helvetica", "B", 8)
    for i, (title, buf, ratio) in enumerate(encoded):
        x = pdf.l_margin + i * (width + gap)
        w, h = (width, width * ratio) if width * ratio <= height else (height / ratio, height)
        pdf.set_xy(x, y)
        pdf.cell(width, 4, _t(title))
        pdf.image(buf, x=x + (width - w) / 2, y=y + 5, w=w, h=h)
    pdf.set_xy(pdf.l_margin, y + height + 7)


def _details(pdf: FPDF, f: Finding, metrics: Mapping[str, Any] | None) -> None:
    if f.image is not None:
        img = f.image
        facts = [f"{img.width} x {img.height} px", img.source.upper()]
        facts += [f"{label} {v}" for label, v in (("modality", img.modality), ("view", img.view_position),
                                                   ("body part", img.body_part)) if v]
        if img.bits_stored:
            facts.append(f"{img.bits_stored} bits")
        if img.transfer_syntax:
            facts.append(img.transfer_syntax)
        _heading(pdf, "Image", 10)
        _text(pdf, ", ".join(facts) + (f". Processing: {'; '.join(img.processing)}." if img.processing else "."))
    if f.gate_layers:
        _heading(pdf, "Input checks", 10)
        for layer in f.gate_layers:
            _text(pdf, f"{layer.name}: {layer.status}" + (f" - {layer.detail}" if layer.detail else ""), size=8)
    _heading(pdf, "Model bundle", 10)
    state = "trained" if f.trained else "UNTRAINED (random weights)"
    _text(pdf, f"{f.bundle.name} v{f.bundle.version}, {state}; runtime {f.runtime}.")
    _text(pdf, "Metrics: " + "; ".join(metric_lines(metrics, f.trained)) + ".")
    if f.timings_ms:
        _heading(pdf, "Stage timings", 10)
        _text(pdf, ", ".join(f"{k} {v:.0f} ms" for k, v in f.timings_ms.items())
              + f"; total {sum(f.timings_ms.values()):.0f} ms.")


def analysis_pdf(a: "Analysis") -> bytes:
    """The report of an analysis, with its pictures and its bundle's metrics."""
    return build_pdf(a.finding(), report_pictures(a), a.bundle.manifest.metrics)


def write_pdf(a: "Analysis", out: str | Path) -> Path:
    """Write the report atomically (temp file, then rename)."""
    from spine_ui._io import atomic_write_bytes

    return atomic_write_bytes(out, analysis_pdf(a))
