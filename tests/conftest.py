"""Shared fixtures: test bundles (built once, cached on disk by a hash of the code that builds them),
synthetic spine DICOMs written by the tests, the web app on the full untrained bundle."""
from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache" / "test-bundles"
os.environ.setdefault("SPINE_CACHE_DIR", str(ROOT / ".cache" / "spine_ui"))
if "SPINE_DATA_DIR" not in os.environ:  # a fresh review database per test run, removed at exit
    os.environ["SPINE_DATA_DIR"] = tempfile.mkdtemp(prefix="spine-test-data-")
    atexit.register(shutil.rmtree, os.environ["SPINE_DATA_DIR"], True)

import spine_ui  # noqa: E402  (applies the offline environment first)

BUILDER_SOURCES = ["spine_ui/bundle/untrained.py", "spine_ui/bundle/export.py", "spine_ui/bundle/architectures.py",
                   "spine_ui/bundle/manifest.py", "spine_ui/config.py", "spine_ui/core/preprocess.py",
                   "spine_ui/core/contract.py", "spine_ui/synth/phantom.py", "spine_ui/synth/anatomy.py",
                   "spine_ui/synth/lesions.py"]


def _code_key(extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for rel in BUILDER_SOURCES:
        h.update((ROOT / rel).read_bytes())
    return h.hexdigest()[:12]


def cached_bundle(label: str, **kwargs) -> Path:
    from spine_ui.bundle.resolve import ensure_untrained

    path = CACHE / f"{label}-{_code_key(repr(sorted(kwargs.items())))}"
    return ensure_untrained(path, **kwargs)


@pytest.fixture(scope="session")
def full_bundle_dir() -> Path:
    """The real untrained bundle: 384 px classifiers + YOLO11-L (about 30 s to build, then cached)."""
    return cached_bundle("untrained")


@pytest.fixture(scope="session")
def small_bundle_dir() -> Path:
    """Same architectures at 96 px, no detector: fast unit tests of triage / CAM / LIME."""
    return cached_bundle("small96", sizes={"densenet121": 96, "tf_efficientnetv2_s": 96, "resnet50": 96},
                         detector=False)


def write_phantom_dicom(path: Path, lesions=("Surgical implant",), seed: int = 1, height: int = 768,
                        **kwargs) -> Path:
    from spine_ui.synth.dicom_writer import write_dicom
    from spine_ui.synth.phantom import render_spine, to_stored

    img, _ = render_spine(np.random.default_rng(seed), list(lesions), height=height)
    mono1 = kwargs.pop("photometric", "MONOCHROME1") == "MONOCHROME1"
    kwargs.setdefault("transfer_syntax", "jpeg2000")
    kwargs.setdefault("modality", None)
    return write_dicom(path, to_stored(img, 12, monochrome1=mono1), bits_stored=12,
                       photometric="MONOCHROME1" if mono1 else "MONOCHROME2", **kwargs)


@pytest.fixture
def phantom_dicom(tmp_path) -> Path:
    """A VinDr-like file: JPEG2000 lossless, 12-bit, MONOCHROME1, no Modality/BodyPart tags."""
    return write_phantom_dicom(tmp_path / "study.dicom")


@pytest.fixture(scope="module")
def gradio_tmp(tmp_path_factory):
    """gradio's upload cache for this module's app, in a folder the test can inspect."""
    mp = pytest.MonkeyPatch()
    d = tmp_path_factory.mktemp("gradio-cache")
    mp.setenv("GRADIO_TEMP_DIR", str(d))
    yield d
    mp.undo()


@pytest.fixture(scope="module")
def demo(gradio_tmp, full_bundle_dir):
    """The Gradio app on the full untrained bundle (ONNX), no examples; modules may override it."""
    from uihelpers import LIME_SAMPLES

    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.pipeline import Analyzer
    from spine_ui.ui.app import build_app

    app = build_app(Analyzer(open_bundle(full_bundle_dir, "onnx")), examples_dir=None, lime_samples=LIME_SAMPLES)
    yield app
    app.close()


@pytest.fixture(scope="module")
def ui(demo):
    """The app's handler object (``SpineUI``)."""
    return demo.spine


@pytest.fixture(scope="session")
def tiny_trained_bundle_dir() -> Path:
    """A TRAINED tiny bundle (tests/tinytrained.py: ResNet18 at 128 px, implant vs no lesion; ~25 s to build
    on 2 cores, then cached like the untrained test bundles)."""
    import tinytrained

    path = CACHE / f"tiny-trained-{_code_key((Path(__file__).parent / 'tinytrained.py').read_text())}"
    if not (path / "manifest.json").is_file():
        from spine_ui._io import atomic_dir

        with atomic_dir(path) as tmp:
            tinytrained.build(tmp)
    return path
