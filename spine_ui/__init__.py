"""SpineXR Triage: spine-radiograph triage (DERNet ensemble + YOLO11-L lesions + Grad-CAM/LIME).

Research use only; not a medical device. Pipeline: decode -> preprocess -> gate -> triage -> detect ->
explain -> report, over a versioned model bundle. ``analyze`` is the entry point the UI, CLI and tests share.
"""
from ._env import configure as _configure

_configure()

__version__ = "0.1.0"
