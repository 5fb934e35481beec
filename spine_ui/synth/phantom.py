"""Synthetic spine radiograph phantom with lesions drawn at known boxes.

A plausible-looking (not anatomically exact) AP or lateral lumbar radiograph: soft-tissue thickness
profile with bowel gas, a gently curved column of 5-7 vertebral bodies (cortical rim, trabecular texture,
concave endplates), dark disc spaces, posterior elements (pedicle rings and processes on AP; pedicles,
articular pillars, spinous processes and foramina on lateral), then exposure, gamma, blur and
signal-dependent noise.

Randomness is split in two streams drawn from the caller's generator: one for the anatomy and the
acquisition, one for the lesions. The same seed therefore gives the same patient with or without
lesions, and the pixel difference sits inside the returned boxes (plus ~2 px of blur).

Lesion boxes are the bounding boxes of the drawn feature masks (for geometric lesions: the pixels whose
bone density changed), as ``(xmin, ymin, xmax, ymax)`` floats in output pixels, ``xmax``/``ymax``
exclusive.
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np


from spine_ui.synth.anatomy import Box, VIEWS, Scene, base_scene, draw_vertebra
from spine_ui.synth.lesions import check_lesions, geometric_box, overlay, plan_geometry


# --------------------------------------------------------------------------- public API
def _expose(sc: Scene, density: np.ndarray) -> np.ndarray:
    h = sc.shape[0]
    heel = 1.0 + sc.heel * (np.arange(h, dtype=np.float32) / h - 0.5)
    img = 1.0 - np.exp(-sc.k * density * heel[:, None])
    img = np.clip((img - sc.lo) / (sc.hi - sc.lo), 0.0, 1.0) ** sc.gamma
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sc.blur)
    img += (sc.sigma_g + sc.sigma_q * np.sqrt(np.clip(img, 0.0, 1.0))) * sc.noise
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def render_spine(rng: np.random.Generator, lesions: Sequence[str] = (), *, height: int = 512,
                 width: int | None = None, view: str | None = None
                 ) -> tuple[np.ndarray, list[tuple[str, Box]]]:
    """Render one phantom radiograph.

    ``lesions``: keys of ``config.LESION_CLASSES`` (one drawn instance each; repeats allowed).
    ``view``: "AP" or "lateral"; ``None`` picks one at random. ``width``: ``None`` gives a portrait
    aspect of 0.72-0.85. Returns ``(image float32 H x W in [0, 1] bone bright, [(label, box), ...])``.
    """
    lesions = check_lesions(lesions)
    base_rng = np.random.default_rng(int(rng.integers(2**63)))
    lesion_rng = np.random.default_rng(int(rng.integers(2**63)))
    sc = base_scene(base_rng, height, width, view)
    verts, geo, claimed = plan_geometry(lesion_rng, sc, lesions)
    bone = np.zeros(sc.shape, np.float32)
    metal = np.zeros(sc.shape, np.float32)
    for v in verts:
        draw_vertebra(sc, v, bone)
    found = [(lab, geometric_box(sc, sc.verts, verts, idx)) for lab, idx in geo]
    found += overlay(lesion_rng, sc, verts, lesions, claimed, bone, metal)
    img = _expose(sc, sc.soft + bone + metal)
    w = sc.shape[1]
    boxes: list[tuple[str, Box]] = []
    for lab, acc in found:
        if acc.box is None:
            continue
        x0, y0, x1, y1 = acc.box
        if sc.flip:
            x0, x1 = w - x1, w - x0
        boxes.append((lab, (float(x0), float(y0), float(x1), float(y1))))
    if sc.flip:
        img = np.ascontiguousarray(img[:, ::-1])
    return img, boxes


def to_stored(img: np.ndarray, bits_stored: int = 12, monochrome1: bool = False) -> np.ndarray:
    """[0, 1] bone-bright image -> uint16 stored values of ``bits_stored`` bits (inverted for MONOCHROME1)."""
    if not 1 <= bits_stored <= 16:
        raise ValueError("bits_stored must be in 1..16")
    top = (1 << bits_stored) - 1
    v = np.rint(np.clip(np.asarray(img, np.float64), 0.0, 1.0) * top).astype(np.uint16)
    return (top - v).astype(np.uint16) if monochrome1 else v


__all__ = ["VIEWS", "Box", "render_spine", "to_stored"]
