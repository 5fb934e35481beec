"""Synthetic test data: DICOM writer and phantom radiographs."""

from spine_ui.synth.dataset import DatasetSummary, make_dataset
from spine_ui.synth.phantom import render_spine, to_stored

__all__ = ["DatasetSummary", "make_dataset", "render_spine", "to_stored"]
