"""Small image statistics shared by the decoder and the outlier gate."""
from __future__ import annotations

import math

import numpy as np


def colorfulness(rgb: np.ndarray) -> float:
    """Hasler–Süsstrunk colourfulness on a 0..255 scale (0 for grayscale input).

    ``rgb`` is H x W x C with C >= 3 (a 4th alpha channel is ignored). Integer arrays are scaled to
    0..255 by their dtype range (uint8 unchanged); floating arrays are taken to be in [0, 1].
    ``sqrt(std_rg^2 + std_yb^2) + 0.3 * sqrt(mean_rg^2 + mean_yb^2)`` with rg = R - G,
    yb = (R + G) / 2 - B.
    """
    arr = np.asarray(rgb)
    if arr.ndim != 3 or arr.shape[2] < 3 or arr.size == 0:
        return 0.0
    if np.issubdtype(arr.dtype, np.integer):
        scale = 255.0 / float(np.iinfo(arr.dtype).max)
    else:
        scale = 255.0
    r, g, b = (arr[..., i].astype(np.float64) * scale for i in range(3))
    rg = r - g
    yb = 0.5 * (r + g) - b
    std_root = math.hypot(float(rg.std()), float(yb.std()))
    mean_root = math.hypot(float(rg.mean()), float(yb.mean()))
    return float(std_root + 0.3 * mean_root)
