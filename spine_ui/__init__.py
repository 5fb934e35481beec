"""SpineXR Triage: spine-radiograph triage (DERNet ensemble + YOLO11-L lesions + Grad-CAM/LIME).

Research use only; not a medical device. The facade::

    import spine_ui
    finding = spine_ui.analyze("study.dcm")          # a typed, frozen Finding; finding.to_dict() is the CLI JSON
    analyzer = spine_ui.Analyzer(spine_ui.open_bundle("models/untrained", "onnx"))

Layout: ``core/`` holds the serving stages (decode -> preprocess -> gate -> triage -> detect -> explain ->
finding), ``bundle/`` the versioned models, ``services/`` what is built on the core (batch, store, PACS, DICOM
output, scheduling), ``ui/`` and ``cli/`` the interfaces, ``train/`` and ``synth/`` the backend.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spine_ui._env import configure as _configure

_configure()

__version__ = "0.1.0"
__all__ = ["analyze", "Analyzer", "AnalysisOptions", "open_bundle", "default_bundle", "Finding", "__version__"]

if TYPE_CHECKING:
    from spine_ui.bundle.store import Bundle
    from spine_ui.core.finding import Finding
    from spine_ui.core.pipeline import AnalysisOptions, Analyzer

_LAZY = {"Analyzer": "spine_ui.core.pipeline", "AnalysisOptions": "spine_ui.core.pipeline",
         "Finding": "spine_ui.core.finding", "open_bundle": "spine_ui.bundle.store"}
_default_analyzer = None


def __getattr__(name: str) -> Any:  # lazy: ``import spine_ui`` stays cheap (no torch, no onnxruntime)
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'spine_ui' has no attribute {name!r}")


def default_bundle() -> "Bundle":
    """The bundle the environment names (``SPINE_MODELS_DIR`` / ``SPINE_BUNDLE`` / ``SPINE_RUNTIME``); the
    untrained bundle is built on first use when none is named."""
    from spine_ui.bundle.resolve import load_default

    return load_default()


def analyze(source: Any, options: "AnalysisOptions | None" = None, *, bundle: "Bundle | None" = None,
            filename: str = "") -> "Finding":
    """Analyse one study (a path, or the file's bytes) and return its :class:`Finding`.

    Without ``bundle`` the default bundle is opened once and reused by later calls."""
    global _default_analyzer
    from spine_ui.core.pipeline import AnalysisOptions, Analyzer

    if bundle is not None:
        analyzer = Analyzer(bundle)
    else:
        if _default_analyzer is None:
            _default_analyzer = Analyzer(default_bundle())
        analyzer = _default_analyzer
    return analyzer.analyze(source, filename, options or AnalysisOptions()).finding()
