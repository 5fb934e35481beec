"""Synthetic test data: DICOM writer and phantom radiographs."""

from .dataset import DatasetSummary, make_dataset
from .phantom import render_spine, to_stored

__all__ = ["DatasetSummary", "make_dataset", "render_spine", "to_stored"]
