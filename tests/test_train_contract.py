"""The model contract holds across training and serving: one DICOM through the training cache (with a
non-default PreprocessConfig from TrainArgs) and through ``Analyzer.load`` on a bundle whose manifest records
that config gives identical model inputs."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from conftest import write_phantom_dicom
from spine_ui.config import PreprocessConfig

HEADER = "image_id,study_id,series_id,rad_id,lesion_type,xmin,ymin,xmax,ymax\n"


def _vindr_folder(root: Path) -> Path:
    """A one-image VinDr-SpineXR layout (the same phantom in both splits, one lesion box in train)."""
    for split in ("train", "test"):
        (root / f"{split}_images").mkdir(parents=True)
        write_phantom_dicom(root / f"{split}_images" / "img1.dicom", seed=3)
    (root / "annotations").mkdir()
    (root / "annotations" / "train.csv").write_text(HEADER + "img1,s1,se1,R1,Surgical implant,100,200,300,400\n")
    (root / "annotations" / "test.csv").write_text(HEADER + "img1,s1,se1,R1,No finding,,,,\n")
    return root


def _bundle_with(src: Path, dst: Path, preprocess: PreprocessConfig) -> Path:
    """The test bundle's models (linked) under a manifest that records ``preprocess``, as export writes it."""
    from spine_ui.bundle.manifest import MANIFEST, read_manifest, write_manifest

    dst.mkdir()
    for f in src.iterdir():
        if f.name != MANIFEST:
            (dst / f.name).symlink_to(f.resolve())
    man = read_manifest(src)
    man.preprocess = preprocess
    write_manifest(dst, man)
    return dst


def test_training_cache_and_serving_build_identical_model_inputs(tmp_path, small_bundle_dir):
    from spine_ui.bundle.store import open_bundle
    from spine_ui.core.contract import model_input
    from spine_ui.core.pipeline import Analyzer
    from spine_ui.train.classifier import read_enhanced
    from spine_ui.train.config import TrainArgs
    from spine_ui.train.stages.data import prepare_data

    pp = PreprocessConfig(clahe_clip=3.0, clahe_tiles=6, working_size=512, resize="letterbox")
    data = _vindr_folder(tmp_path / "data")
    args = TrainArgs(data=data, out=tmp_path / "models" / "b", preprocess=pp, verbose=False).resolved()
    train_split, _test, cache = prepare_data(args, tmp_path / "run")
    cached = read_enhanced(train_split.paths()[0])
    bundle = open_bundle(_bundle_with(small_bundle_dir, tmp_path / "bundle", pp), "onnx")
    assert bundle.manifest.preprocess == pp
    served = Analyzer(bundle).load(data / "train_images" / "img1.dicom")
    assert served.accepted, served.gate.reason
    np.testing.assert_array_equal(served.enhanced, cached)
    assert max(cached.shape) == 512  # the config reached the cache (working size), not the default 1024
    for entry in bundle.classifiers:
        train_x, train_pl = model_input(cached, entry.input_size, args.selection.tta_views, args.preprocess)
        serve_x, serve_pl = model_input(served.enhanced, entry.input_size, bundle.manifest.triage.tta_views,
                                        bundle.manifest.preprocess)
        assert train_x.shape == (5, 3, entry.input_size, entry.input_size)
        np.testing.assert_array_equal(train_x, serve_x)
        assert train_pl == serve_pl and train_pl.pad_x + train_pl.pad_y > 0  # letterboxed
    # the control: with the dataclass default, serving would see another image
    default = Analyzer(open_bundle(small_bundle_dir, "onnx")).load(data / "train_images" / "img1.dicom")
    assert default.enhanced.shape != cached.shape
    # changing the config rebuilds the cache instead of reusing images made with another one
    args2 = dataclasses.replace(args, preprocess=dataclasses.replace(pp, clahe_clip=2.0))
    again, _, _ = prepare_data(args2, tmp_path / "run")
    assert not np.array_equal(read_enhanced(again.paths()[0]), cached)
