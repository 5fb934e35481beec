"""The image viewer: one ``gr.HTML`` with a small canvas script (``viewer.js``), used by the single-study view and
the worklist's case panel. The server sends the display copy of the original values once per study (uint16,
zlib, base64; window/level runs in the browser) and the overlays as PNG data URLs; no page fetches anything.

Measured on this machine (``benchmarks/viewer_wl.py``): a server-side window/level of a 1280 x 3045 study to PNG
costs the server tens of milliseconds and a round trip per slider step; in the browser one step is a lookup pass
over the copy, so the browser does it.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from spine_ui.config import ViewerConfig
from spine_ui.core.display import client_payload
from spine_ui.core.overlays import colour_hex

if TYPE_CHECKING:
    from spine_ui.core.pipeline import Analysis

HERE = Path(__file__).resolve().parent
JS = (HERE / "viewer.js").read_text(encoding="utf-8")
CSS = (HERE / "viewer.css").read_text(encoding="utf-8")
ARCH_NAMES = {"densenet121": "DenseNet-121", "tf_efficientnetv2_s": "EfficientNetV2-S", "resnet50": "ResNet-50"}

TEMPLATE = """<div class="sxv" data-ready="0">
<div class="sxv-note" role="status" aria-live="polite"></div>
<div class="sxv-main">
<div class="sxv-stage"><canvas class="sxv-canvas" tabindex="0" role="img"
 aria-label="Radiograph viewer: drag to pan, mouse wheel or plus and minus keys to zoom, arrow keys to pan, 0 to fit, shift-drag for window and level"></canvas>
<div class="sxv-empty">No image loaded.</div></div>
<div class="sxv-side">
<div class="sxv-group" role="group" aria-label="Zoom">
<button type="button" class="sxv-btn sxv-zin" aria-label="Zoom in" title="Zoom in (+)">+</button>
<button type="button" class="sxv-btn sxv-zout" aria-label="Zoom out" title="Zoom out (-)">&minus;</button>
<button type="button" class="sxv-btn sxv-reset" aria-label="Reset view" title="Fit the whole image (0)">Reset</button>
<span class="sxv-zoomtxt">100 %</span></div>
<div class="sxv-group" role="group" aria-label="Window and level">
<label class="sxv-row">Preset <select class="sxv-preset" aria-label="Window preset"></select></label>
<label class="sxv-row">Window <input type="range" class="sxv-win" aria-label="Window"><output class="sxv-winv"></output></label>
<label class="sxv-row">Level <input type="range" class="sxv-lev" aria-label="Level"><output class="sxv-levv"></output></label>
<label class="sxv-row"><input type="checkbox" class="sxv-inv" aria-label="Invert"> Invert</label></div>
<div class="sxv-group" role="group" aria-label="Overlays">
<label class="sxv-row"><input type="checkbox" class="sxv-boxes" checked aria-label="Lesion boxes"> Lesion boxes</label>
<label class="sxv-row"><input type="checkbox" class="sxv-cam" aria-label="Grad-CAM"> Grad-CAM
 <select class="sxv-camsel" aria-label="Grad-CAM map"></select></label>
<label class="sxv-row">Opacity <input type="range" class="sxv-camop" min="0" max="100" value="45" aria-label="Grad-CAM opacity"></label>
<label class="sxv-row"><input type="checkbox" class="sxv-lime" aria-label="LIME"> LIME</label>
<label class="sxv-row">Opacity <input type="range" class="sxv-limeop" min="0" max="100" value="50" aria-label="LIME opacity"></label></div>
<div class="sxv-legend" aria-label="Box colours"></div>
<table class="sxv-lesions" hidden><caption>Lesions: select a row to centre its box</caption>
<thead><tr><th>Lesion</th><th>Conf.</th><th>Box (px)</th></tr></thead><tbody></tbody></table>
<div class="sxv-readout" aria-live="off"></div>
</div></div></div>"""


def component(elem_id: str) -> Any:
    """The viewer's ``gr.HTML`` (value: :func:`viewer_value` or None)."""
    import gradio as gr

    return gr.HTML(None, html_template=TEMPLATE, css_template=CSS, js_on_load=JS, elem_id=elem_id,
                   elem_classes=["sx-viewer"], padding=False)


def _png_data_url(rgba: np.ndarray) -> str:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgba, cv2.COLOR_RGBA2BGRA))
    if not ok:
        raise ValueError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(buf.tobytes()).decode("ascii")


def heat_rgba(heat: np.ndarray) -> np.ndarray:
    """A [0, 1] map as an opaque jet-coloured RGBA picture (the viewer fades it with its opacity slider)."""
    colour = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)[:, :, ::-1]
    return np.dstack([colour, np.full(heat.shape[:2], 255, np.uint8)])


def lime_rgba(weights: np.ndarray) -> np.ndarray:
    """Superpixels for abnormal in red, against in blue; alpha by |weight| (zero weight: transparent)."""
    scale = float(np.abs(weights).max()) or 1.0
    w = np.clip(weights / scale, -1, 1)
    out = np.zeros(weights.shape[:2] + (4,), np.uint8)
    out[w > 0, :3] = (220, 30, 30)
    out[w <= 0, :3] = (30, 90, 220)
    out[..., 3] = np.uint8(np.abs(w) * 255)
    return out


def viewer_value(a: "Analysis", *, with_image: bool = True, note: str = "",
                 cfg: ViewerConfig = ViewerConfig()) -> dict[str, Any] | None:
    """The viewer's value for an analysis: the image (unless the page already has it: ``with_image=False``),
    lesions with their class colours, Grad-CAM maps and LIME when computed, and a one-line note."""
    if a.display is None:
        return None
    lesions = [{"name": les.name, "colour": colour_hex(les.label), "confidence": round(float(les.confidence), 4),
                "box": [round(float(v), 1) for v in les.box]} for les in (a.lesions or ())]
    cams = []
    if a.cam is not None:
        cams.append({"id": "fused", "name": "Ensemble (fused)", "src": _png_data_url(heat_rgba(a.cam.fused))})
        cams += [{"id": arch, "name": ARCH_NAMES.get(arch, arch), "src": _png_data_url(heat_rgba(m))}
                 for arch, m in a.cam.per_model.items()]
    return {
        "key": a.key,
        "image": client_payload(a.display, cfg) if with_image else None,
        "lesions": lesions,
        "detector_ran": a.detection is not None,
        "cams": cams,
        "lime": _png_data_url(lime_rgba(a.lime.weights)) if a.lime is not None else None,
        "note": note,
    }
