"""The image operations of the one preprocessing path for training and serving.

pixels in [0, 1] --enhance()--> CLAHE uint8 image at working resolution (what the detector, the display
and the training cache use) --to_square() + normalise()--> normalised float32 3 x S x S classifier input.
``spine_ui.core.contract.model_input`` composes the second step (with the TTA views) for both sides.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from spine_ui.config import PreprocessConfig


@dataclass(frozen=True)
class Placement:
    """Where a working image sits inside a square model input (to map maps back to the image)."""

    size: int
    scale_x: float
    scale_y: float
    pad_x: int
    pad_y: int
    width: int
    height: int

    def crop(self, square_map: np.ndarray) -> np.ndarray:
        """Crop a map defined on the square input (any resolution) to the image region."""
        k = square_map.shape[0] / self.size
        x0, y0 = int(round(self.pad_x * k)), int(round(self.pad_y * k))
        x1 = int(round((self.pad_x + self.width * self.scale_x) * k))
        y1 = int(round((self.pad_y + self.height * self.scale_y) * k))
        return square_map[y0:max(y1, y0 + 1), x0:max(x1, x0 + 1)]


def shrink_to(pixels: np.ndarray, working_size: int) -> np.ndarray:
    """Area-downsample so the long side is at most ``working_size`` (never enlarges)."""
    h, w = pixels.shape[:2]
    scale = working_size / max(h, w)
    if scale >= 1.0:
        return pixels
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def enhance(pixels: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """Downscale to the working size (long side) and apply CLAHE; returns uint8 H x W."""
    if pixels.ndim != 2:
        raise ValueError("enhance() expects a single-channel image")
    img = shrink_to(np.asarray(pixels, dtype=np.float32), cfg.working_size)
    u8 = np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)
    clahe = cv2.createCLAHE(clipLimit=cfg.clahe_clip, tileGridSize=(cfg.clahe_tiles, cfg.clahe_tiles))
    return clahe.apply(u8)


def to_square(image: np.ndarray, size: int, policy: str = "stretch") -> tuple[np.ndarray, Placement]:
    """Resize a 2-D image to size x size by stretching or letterboxing (zero padding)."""
    h, w = image.shape[:2]
    interp = cv2.INTER_AREA if max(h, w) > size else cv2.INTER_LINEAR
    if policy == "stretch":
        out = cv2.resize(image, (size, size), interpolation=interp)
        return out, Placement(size, size / w, size / h, 0, 0, w, h)
    if policy != "letterbox":
        raise ValueError(f"unknown resize policy {policy!r}")
    s = size / max(h, w)
    nw, nh = max(1, round(w * s)), max(1, round(h * s))
    resized = cv2.resize(image, (nw, nh), interpolation=interp)
    out = np.zeros((size, size), dtype=image.dtype)
    px, py = (size - nw) // 2, (size - nh) // 2
    out[py:py + nh, px:px + nw] = resized
    return out, Placement(size, nw / w, nh / h, px, py, w, h)


def normalise(square_u8: np.ndarray, cfg: PreprocessConfig = PreprocessConfig()) -> np.ndarray:
    """uint8 S x S (or N x S x S) -> float32 3 x S x S (or N x 3 x S x S), mean/std normalised."""
    x = square_u8.astype(np.float32) / 255.0
    mean = np.asarray(cfg.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(cfg.std, np.float32).reshape(3, 1, 1)
    x = np.expand_dims(x, -3)  # channel axis
    return ((x - mean) / std).astype(np.float32)

