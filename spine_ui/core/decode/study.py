"""The decoded study: display-ready pixels plus metadata that carries no patient identity."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class StudyMeta:
    """Technical metadata only. Never PatientName/ID/BirthDate, dates, institution or free text."""

    source: str  # "dicom" or "raster"
    modality: str | None = None
    body_part: str | None = None
    view_position: str | None = None
    photometric: str | None = None
    bits_stored: int | None = None
    transfer_syntax: str | None = None
    original_shape: tuple[int, int] = (0, 0)
    original_dtype: str = ""
    colorfulness: float = 0.0  # Hasler-Suesstrunk colourfulness of an RGB raster (0 for grayscale)
    #: The file's own Window Center/Width pairs (modality units) with their explanations, for the viewer.
    windows: tuple[tuple[float, float, str], ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)  # e.g. "VOI LUT applied", "MONOCHROME1 inverted"


@dataclass(frozen=True)
class Study:
    """``pixels``: float32 H x W in [0, 1], bone bright (MONOCHROME2 sense), windowed for display.
    ``original``: the stored values after the Modality LUT (DICOM) or the gray samples before scaling (raster),
    H x W, for window/level in the viewer; None when the decoder did not keep them."""

    pixels: np.ndarray
    meta: StudyMeta
    original: np.ndarray | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the decoded image, also after ``without_pixels``."""
        if self.pixels.size == 0:
            return self.meta.original_shape
        return (int(self.pixels.shape[0]), int(self.pixels.shape[1]))

    def without_pixels(self) -> "Study":
        """A metadata-only copy: the full-resolution pixels (and original values) are released once the working
        image and the display copy exist."""
        return Study(np.zeros((0, 0), np.float32), StudyMeta(**{**self.meta.__dict__, "original_shape": self.shape}))
