"""Synthetic phantoms and the VinDr-SpineXR-format synthetic dataset."""
from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest

from spine_ui.config import LESION_CLASSES
from spine_ui.core.decode import decode_file
from spine_ui.synth.dataset import CSV_COLUMNS, NO_FINDING, make_dataset
from spine_ui.synth.dicom_writer import write_dicom
from spine_ui.synth.phantom import render_spine, to_stored

H = 256
PAD = 3  # blur spill-over around a drawn feature


def _render(seed: int, lesions=(), view="AP", height=H):
    return render_spine(np.random.default_rng(seed), list(lesions), height=height, view=view)


def _inside(boxes, shape, pad=PAD) -> np.ndarray:
    m = np.zeros(shape, bool)
    for _, (x0, y0, x1, y1) in boxes:
        m[max(int(y0) - pad, 0):int(np.ceil(y1)) + pad, max(int(x0) - pad, 0):int(np.ceil(x1)) + pad] = True
    return m


# --------------------------------------------------------------------------- phantom
def test_phantom_is_deterministic_per_seed():
    a, ba = _render(7, ["Osteophytes", "Surgical implant"])
    b, bb = _render(7, ["Osteophytes", "Surgical implant"])
    c, _ = _render(8, ["Osteophytes", "Surgical implant"])
    assert np.array_equal(a, b) and ba == bb
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("view", ["AP", "lateral"])
def test_phantom_image_range_and_shape(view):
    img, boxes = _render(1, [], view=view)
    assert img.dtype == np.float32 and img.ndim == 2 and img.shape[0] == H
    assert 0.6 * H < img.shape[1] < 0.9 * H
    assert img.min() >= 0.0 and img.max() <= 1.0 and img.std() > 0.05
    assert boxes == []
    img2, _ = render_spine(np.random.default_rng(1), [], height=H, width=200, view=view)
    assert img2.shape == (H, 200)


@pytest.mark.parametrize("view", ["AP", "lateral"])
@pytest.mark.parametrize("lesion", LESION_CLASSES)
def test_each_lesion_changes_pixels_inside_its_box(lesion, view):
    for seed in (0, 1):
        normal, none = _render(seed, [], view)
        abn, boxes = _render(seed, [lesion], view)
        assert none == [] and [b[0] for b in boxes] == [lesion]
        x0, y0, x1, y1 = boxes[0][1]
        h, w = abn.shape
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        diff = np.abs(abn - normal)
        inside = _inside(boxes, diff.shape)
        assert diff[inside].sum() / diff.sum() > 0.95  # the lesion is where the box says
        box = diff[int(y0):int(y1), int(x0):int(x1)]
        assert box.mean() > 0.03 and box.max() > 0.15  # and it is clearly visible


def test_all_lesions_together_boxes_inside_image():
    for seed, view in [(3, "AP"), (4, "lateral"), (5, "AP"), (6, "lateral")]:
        normal, _ = _render(seed, [], view)
        img, boxes = _render(seed, LESION_CLASSES, view)
        assert sorted(b[0] for b in boxes) == sorted(LESION_CLASSES)
        h, w = img.shape
        for _, (x0, y0, x1, y1) in boxes:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        diff = np.abs(img - normal)
        assert diff[_inside(boxes, diff.shape)].sum() / diff.sum() > 0.95


def test_unknown_lesion_is_rejected():
    with pytest.raises(ValueError, match="Osteophytes"):
        _render(0, ["Fracture"])
    with pytest.raises(ValueError):
        render_spine(np.random.default_rng(0), [], height=H, view="oblique")


def test_phantom_is_fast():
    rng = np.random.default_rng(0)
    render_spine(rng, ["Osteophytes"], height=512)  # warm-up
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        render_spine(rng, ["Osteophytes", "Surgical implant", "Disc space narrowing"], height=512)
        times.append(time.perf_counter() - t0)
    assert np.median(times) < 0.1  # ~10 ms on one core; generous for a shared machine


def test_to_stored_bits_and_inversion():
    img = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    s2 = to_stored(img, 12)
    s1 = to_stored(img, 12, monochrome1=True)
    assert s2.dtype == np.uint16 and s2.min() == 0 and s2.max() == 4095
    assert np.array_equal(s1, 4095 - s2)
    assert to_stored(img, 10).max() == 1023


@pytest.mark.parametrize("syntax", ["jpeg2000", "explicit"])
def test_monochrome1_round_trip_decodes_bone_bright(tmp_path, syntax):
    img, _ = _render(2, ["Surgical implant"], "lateral")
    path = write_dicom(tmp_path / "x.dcm", to_stored(img, 12, monochrome1=True), bits_stored=12,
                       photometric="MONOCHROME1", transfer_syntax=syntax, window=(2047.5, 4096),
                       modality=None)
    out = decode_file(path).pixels
    assert out.shape == img.shape
    assert np.abs(out - img).max() < 2 / 4095  # lossless, un-inverted


# --------------------------------------------------------------------------- dataset
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    summary = make_dataset(root, 8, seed=3, height=H, progress=False)
    return root, summary


def _rows(root: Path, split: str) -> list[dict[str, str]]:
    with open(root / "annotations" / f"{split}.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_dataset_layout_and_header(dataset):
    root, summary = dataset
    for split in ("train", "test"):
        with open(root / "annotations" / f"{split}.csv") as fh:
            assert fh.readline().strip() == ",".join(CSV_COLUMNS)
        ids = {r["image_id"] for r in _rows(root, split)}
        files = {p.stem for p in (root / f"{split}_images").glob("*.dicom")}
        assert ids == files and len(ids) == summary.images[split]
        assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert summary.images["train"] + summary.images["test"] == 8
    assert summary.images["test"] >= 1
    assert "synthetic VinDr-SpineXR dataset" in str(summary)


def test_dataset_rows_no_finding_duplicates_and_classes(dataset):
    root, summary = dataset
    rows = _rows(root, "train") + _rows(root, "test")
    by_image: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_image.setdefault(r["image_id"], []).append(r)
    normal = [rs for rs in by_image.values() if rs[0]["lesion_type"] == NO_FINDING]
    abnormal = [rs for rs in by_image.values() if rs[0]["lesion_type"] != NO_FINDING]
    assert len(normal) == len(abnormal) == 4
    for rs in normal:
        assert len(rs) == 1 and all(rs[0][k] == "" for k in ("xmin", "ymin", "xmax", "ymax"))
    for rs in abnormal:
        assert all(r["lesion_type"] in LESION_CLASSES for r in rs)
        assert all(float(r["xmin"]) < float(r["xmax"]) and float(r["ymin"]) < float(r["ymax"]) for r in rs)
    assert {r["lesion_type"] for r in rows} == set(LESION_CLASSES) | {NO_FINDING}
    double = [rs for rs in abnormal if len({r["rad_id"] for r in rs}) == 2]
    assert double, "some images are read by two radiologists"
    rs = double[0]
    first, second = ([r for r in rs if r["rad_id"] == rad] for rad in sorted({r["rad_id"] for r in rs}))
    assert [r["lesion_type"] for r in first] == [r["lesion_type"] for r in second]
    for a, b in zip(first, second):
        d = [abs(float(a[k]) - float(b[k])) for k in ("xmin", "ymin", "xmax", "ymax")]
        assert max(d) < 5 and a != b  # near-duplicates
    assert sum(summary.abnormal.values()) == 4


def test_dataset_studies_grouped_and_split_by_study(dataset):
    root, _ = dataset
    train = {r["study_id"] for r in _rows(root, "train")}
    test = {r["study_id"] for r in _rows(root, "test")}
    assert not train & test
    images_per_study: dict[str, set[str]] = {}
    for r in _rows(root, "train") + _rows(root, "test"):
        images_per_study.setdefault(r["study_id"], set()).add(r["image_id"])
    assert max(len(v) for v in images_per_study.values()) == 2


def test_dataset_dicoms_mixed_and_decode_bone_bright(dataset):
    root, _ = dataset
    seen = set()
    for path in sorted(root.glob("*_images/*.dicom")):
        ds = pydicom.dcmread(path)
        assert ds.BitsStored == 12 and "Modality" not in ds and "BodyPartExamined" not in ds
        seen.add((ds.file_meta.TransferSyntaxUID.name.split()[0], ds.PhotometricInterpretation))
        stored = ds.pixel_array.astype(np.float64) / 4095
        expected = 1 - stored if ds.PhotometricInterpretation == "MONOCHROME1" else stored
        out = decode_file(path).pixels
        assert out.dtype == np.float32 and out.shape == expected.shape
        assert np.corrcoef(out.ravel(), expected.ravel())[0, 1] > 0.99  # bone bright after decoding
    assert {s[1] for s in seen} == {"MONOCHROME1", "MONOCHROME2"}
    assert {s[0] for s in seen} == {"JPEG", "Explicit"}


def test_dataset_is_deterministic(dataset, tmp_path):
    root, _ = dataset
    make_dataset(tmp_path, 8, seed=3, height=H, progress=False)
    for split in ("train", "test"):
        assert (root / "annotations" / f"{split}.csv").read_text() == \
            (tmp_path / "annotations" / f"{split}.csv").read_text()
    for path in sorted(root.glob("*_images/*.dicom"))[:3]:
        other = tmp_path / path.parent.name / path.name
        assert np.array_equal(pydicom.dcmread(path).pixel_array, pydicom.dcmread(other).pixel_array)
