"""Finding -> pictures: lesion boxes with a legend, Grad-CAM and LIME overlays (RGB uint8 arrays)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from spine_ui.config import LESION_CLASSES, display_name
from spine_ui.core.detect import Lesion

#: One colour per lesion class (Okabe-Ito palette, colour-blind safe), RGB.
CLASS_COLOURS: dict[str, tuple[int, int, int]] = dict(zip(LESION_CLASSES, [
    (230, 159, 0), (86, 180, 233), (240, 228, 66), (0, 158, 115), (0, 114, 178), (213, 94, 0), (204, 121, 167)]))


def colour_hex(label: str) -> str:
    return "#%02x%02x%02x" % CLASS_COLOURS.get(label, (255, 255, 255))


def gray_to_rgb(image: np.ndarray) -> np.ndarray:
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image.copy()


def draw_lesions(image: np.ndarray, lesions: Sequence[Lesion], original_shape: tuple[int, int]) -> np.ndarray:
    """Boxes (original pixel coordinates) drawn on ``image`` (the enhanced working image), one colour per class."""
    out = gray_to_rgb(image)
    sy, sx = image.shape[0] / original_shape[0], image.shape[1] / original_shape[1]
    thick = max(2, round(max(image.shape[:2]) / 400))
    for les in lesions:
        x0, y0, x1, y1 = les.box
        p0, p1 = (round(x0 * sx), round(y0 * sy)), (round(x1 * sx), round(y1 * sy))
        colour = CLASS_COLOURS.get(les.label, (255, 255, 255))
        cv2.rectangle(out, p0, p1, colour, thick)
        text = f"{les.name} {les.confidence:.2f}"
        cv2.putText(out, text, (p0[0], max(12, p0[1] - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thick, colour,
                    max(1, thick // 2), cv2.LINE_AA)
    return out


def legend(labels: Sequence[str] = LESION_CLASSES, width: int = 260) -> np.ndarray:
    """A small legend image: one swatch per lesion class."""
    row = 22
    out = np.full((row * len(labels) + 8, width, 3), 255, np.uint8)
    for i, lab in enumerate(labels):
        y = 4 + i * row
        cv2.rectangle(out, (6, y + 3), (22, y + 17), CLASS_COLOURS.get(lab, (0, 0, 0)), -1)
        cv2.putText(out, display_name(lab), (30, y + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    return out


def heatmap_overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Jet-coloured [0, 1] map over the grayscale image."""
    colour = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)[:, :, ::-1]
    return np.uint8(np.clip((1 - alpha) * gray_to_rgb(image) + alpha * colour, 0, 255))


def lime_overlay(image: np.ndarray, weights: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Superpixels supporting "abnormal" in red, against it in blue, strength by |weight|."""
    base = gray_to_rgb(image).astype(np.float32)
    scale = float(np.abs(weights).max()) or 1.0
    w = np.clip(weights / scale, -1, 1)[:, :, None]
    red, blue = np.array([220, 30, 30], np.float32), np.array([30, 90, 220], np.float32)
    tint = np.where(w > 0, red, blue)
    a = alpha * np.abs(w)
    out = (1 - a) * base + a * tint
    edges = cv2.Canny(np.uint8((w[:, :, 0] * 127) + 128), 1, 1) > 0
    out[edges] = (255, 255, 0)
    return np.uint8(np.clip(out, 0, 255))


def save_png(path: Path, rgb: np.ndarray) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1])):
        raise OSError(f"could not write {path.name}")
    return path
