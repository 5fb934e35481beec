"""VinDr-SpineXR annotations, YOLO labels, the training cache and study-grouped folds."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from spine_ui.config import LESION_CLASSES, PreprocessConfig
from spine_ui.synth.dataset import make_dataset
from spine_ui.train.folds import grouped_folds
from spine_ui.train.vindr import (
    Box,
    box_to_yolo,
    build_cache,
    iou,
    merge_duplicates,
    read_annotations,
    read_labels,
    write_yolo_yaml,
    yolo_to_box,
)

# VinDr's own column order differs from the synthetic writer's: the reader goes by name.
HEADER = "image_id,study_id,series_id,rad_id,lesion_type,xmin,ymin,xmax,ymax"


def _csv(tmp_path: Path, lines: list[str], header: str = HEADER) -> Path:
    p = tmp_path / "train.csv"
    p.write_text("\n".join([header, *lines]) + "\n")
    return p


# --------------------------------------------------------------------------- CSV parsing
def test_read_annotations_no_finding_and_lesions(tmp_path):
    p = _csv(tmp_path, [
        "img1,st1,se1,rad1,No finding,,,,",
        "img2,st1,se1,rad2,Osteophytes,10,20,30,50",
        "img2,st1,se1,rad2,Surgical implant,100.5,40,160,220.25",
        "img3,st2,se2,rad3,Spondylolysthesis,5,5,40,40",
    ])
    recs = read_annotations(p)
    assert [r.image_id for r in recs] == ["img1", "img2", "img3"]
    r1, r2, r3 = recs
    assert r1.boxes == [] and not r1.abnormal and r1.study_id == "st1"
    assert r2.abnormal and [b.label for b in r2.boxes] == ["Osteophytes", "Surgical implant"]
    assert r2.boxes[1] == Box("Surgical implant", 100.5, 40.0, 160.0, 220.25, "rad2")
    assert r3.abnormal and r3.series_id == "se2"


def test_duplicate_boxes_from_two_radiologists_are_merged(tmp_path):
    p = _csv(tmp_path, [
        "img1,st1,se1,rad1,Osteophytes,10,10,50,50",
        "img1,st1,se1,rad2,Osteophytes,12,14,52,50",  # same lesion, second reader
        "img1,st1,se1,rad2,Osteophytes,200,200,240,240",  # another osteophyte
        "img1,st1,se1,rad1,Disc space narrowing,10,10,50,50",  # other label, same place
        "img1,st1,se1,rad1,Other lesions,100,100,140,140",
        "img1,st1,se1,rad1,Other lesions,102,100,142,140",  # same reader twice: kept
    ])
    (rec,) = read_annotations(p)
    by = {}
    for b in rec.boxes:
        by.setdefault(b.label, []).append(b)
    assert len(by["Osteophytes"]) == 2
    merged = by["Osteophytes"][0]
    assert (merged.xmin, merged.ymin, merged.xmax, merged.ymax) == (11.0, 12.0, 51.0, 50.0)
    assert merged.rad_id == "rad1+rad2"
    assert len(by["Disc space narrowing"]) == 1 and len(by["Other lesions"]) == 2
    (raw,) = read_annotations(p, merge=False)
    assert len(raw.boxes) == 6


def test_merge_respects_iou_threshold():
    a = Box("Osteophytes", 0, 0, 10, 10, "rad1")
    b = Box("Osteophytes", 5, 0, 15, 10, "rad2")  # IoU 1/3
    assert iou(a, b) == pytest.approx(1 / 3)
    assert len(merge_duplicates([a, b])) == 2
    assert len(merge_duplicates([a, b], iou_threshold=0.3)) == 1


def test_missing_columns_are_named(tmp_path):
    p = _csv(tmp_path, ["img1,st1,rad1,No finding,,,,"],
             header="image_id,study_id,rad_id,lesion_type,xmin,ymin,xmax,ymax")
    with pytest.raises(ValueError, match="series_id"):
        read_annotations(p)
    p = _csv(tmp_path, ["img1,st1,No finding"], header="image_id,study_id,lesion_type")
    with pytest.raises(ValueError, match=r"series_id, rad_id, xmin, ymin, xmax, ymax"):
        read_annotations(p)


def test_unknown_lesion_type_lists_valid_ones(tmp_path):
    p = _csv(tmp_path, ["img1,st1,se1,rad1,Fracture,1,1,5,5"])
    with pytest.raises(ValueError, match="Fracture") as err:
        read_annotations(p)
    assert all(c in str(err.value) for c in LESION_CLASSES) and "No finding" in str(err.value)


def test_lesion_without_coordinates_is_an_error(tmp_path):
    p = _csv(tmp_path, ["img1,st1,se1,rad1,Osteophytes,,,,"])
    with pytest.raises(ValueError, match="line 2"):
        read_annotations(p)


# --------------------------------------------------------------------------- YOLO labels
def test_yolo_round_trip_is_exact():
    rng = np.random.default_rng(0)
    for _ in range(200):
        w, h = (int(v) for v in rng.integers(64, 4000, 2))
        x0, x1 = sorted(rng.uniform(0, w, 2))
        y0, y1 = sorted(rng.uniform(0, h, 2))
        label = LESION_CLASSES[int(rng.integers(len(LESION_CLASSES)))]
        box = Box(label, x0, y0, x1, y1)
        y = box_to_yolo(box, w, h)
        assert y[0] == LESION_CLASSES.index(label) and all(0 <= v <= 1 for v in y[1:])
        back = yolo_to_box(y, w, h)
        assert back.label == label
        assert np.allclose([back.xmin, back.ymin, back.xmax, back.ymax], [x0, y0, x1, y1], rtol=0, atol=1e-6)


# --------------------------------------------------------------------------- cache
@pytest.fixture(scope="module")
def vindr_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("vindr")
    make_dataset(root, 6, seed=11, height=256, progress=False)
    return root


CFG = PreprocessConfig(working_size=128)


def test_build_cache_writes_scaled_labels(vindr_dir, tmp_path):
    cache = tmp_path / "cache"
    index = build_cache(vindr_dir, "train", cache, CFG, progress=False)
    records = {r.image_id: r for r in read_annotations(vindr_dir / "annotations" / "train.csv")}
    assert len(index) == len(records) and index.built == len(records) and index.skipped == 0
    assert json.loads((cache / "config.json").read_text())["preprocess"]["working_size"] == 128
    n_checked = 0
    for row in index.rows:
        img = cv2.imread(str(index.image_path(row.image_id)), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint8 and img.shape == (row.height, row.width)
        assert max(img.shape) == 128 and row.orig_height == 256
        rec = records[row.image_id]
        assert row.abnormal == rec.abnormal and row.study_id == rec.study_id
        boxes = read_labels(index.label_path(row.image_id), row.width, row.height)
        assert len(boxes) == len(rec.boxes) == row.n_boxes
        sx, sy = row.orig_width / row.width, row.orig_height / row.height
        for got, want in zip(boxes, rec.boxes):
            assert got.label == want.label
            assert 0 <= got.xmin < got.xmax <= row.width and 0 <= got.ymin < got.ymax <= row.height
            back = got.scaled(sx, sy)
            assert np.allclose([back.xmin, back.ymin, back.xmax, back.ymax],
                               [want.xmin, want.ymin, want.xmax, want.ymax], atol=1.0)
            n_checked += 1
    assert n_checked > 0
    with open(cache / "train" / "index.csv") as fh:
        assert fh.readline().strip() == "image_id,study_id,abnormal,width,height,orig_width,orig_height,n_boxes"


def test_build_cache_rerun_skips_and_config_change_rebuilds(vindr_dir, tmp_path):
    cache = tmp_path / "cache"
    first = build_cache(vindr_dir, "test", cache, CFG, progress=False)
    files = [first.image_path(r.image_id) for r in first.rows] + [first.label_path(r.image_id) for r in first.rows]
    mtimes = [p.stat().st_mtime_ns for p in files]
    again = build_cache(vindr_dir, "test", cache, CFG, progress=False)
    assert again.built == 0 and again.skipped == len(first)
    assert [p.stat().st_mtime_ns for p in files] == mtimes
    assert again.rows == first.rows

    cfg2 = PreprocessConfig(working_size=96)
    third = build_cache(vindr_dir, "test", cache, cfg2, progress=False)
    assert third.built == len(first) and third.skipped == 0
    for r in third.rows:
        img = cv2.imread(str(third.image_path(r.image_id)), cv2.IMREAD_UNCHANGED)
        assert max(img.shape) == 96
    assert json.loads((cache / "config.json").read_text())["preprocess"]["working_size"] == 96


def test_build_cache_rejects_bad_split(vindr_dir, tmp_path):
    with pytest.raises(ValueError, match="split"):
        build_cache(vindr_dir, "val", tmp_path, CFG, progress=False)


def test_write_yolo_yaml(tmp_path):
    path = write_yolo_yaml(tmp_path)
    data = yaml.safe_load(path.read_text())
    assert data["train"] == "train/images" and data["val"] == "test/images"
    assert Path(data["path"]) == tmp_path.resolve()
    assert data["names"] == dict(enumerate(LESION_CLASSES)) and data["nc"] == 7


# --------------------------------------------------------------------------- folds
def _studies(n_studies: int, seed: int = 0) -> tuple[list[str], list[int]]:
    rng = np.random.default_rng(seed)
    ids, labels = [], []
    for s in range(n_studies):
        for _ in range(int(rng.integers(1, 3))):  # one or two views per study
            ids.append(f"study{s}")
            labels.append(int(s % 2 == 0))
    return ids, labels


def test_grouped_folds_disjoint_studies_both_classes():
    ids, labels = _studies(40)
    folds = grouped_folds(ids, labels, n_folds=5, seed=42)
    assert len(folds) == 5
    ids_a, y = np.asarray(ids), np.asarray(labels)
    seen = np.concatenate([val for _, val in folds])
    assert sorted(seen) == list(range(len(ids)))  # every image validated exactly once
    val_studies = [set(ids_a[val]) for _, val in folds]
    for i, (train, val) in enumerate(folds):
        assert not set(ids_a[train]) & set(ids_a[val])
        assert set(y[val]) == {0, 1}
        for j in range(i):
            assert not val_studies[i] & val_studies[j]
    assert [v.tolist() for _, v in grouped_folds(ids, labels, 5, 42)] == [v.tolist() for _, v in folds]


def test_grouped_folds_degrade_with_few_studies():
    ids = ["a", "b", "c", "d", "e", "f", "g"]
    labels = [1, 1, 1, 0, 0, 0, 0]  # 3 positive studies: at most 3 folds
    with pytest.warns(UserWarning, match="only 3 folds"):
        folds = grouped_folds(ids, labels, n_folds=5)
    assert len(folds) == 3
    assert all(set(np.asarray(labels)[v]) == {0, 1} for _, v in folds)
    with pytest.raises(ValueError, match="too few studies"):
        grouped_folds(["a", "b", "c"], [1, 0, 0])
    with pytest.raises(ValueError, match="two label classes"):
        grouped_folds(["a", "b", "c"], [0, 0, 0])
    with pytest.raises(ValueError, match="labels"):
        grouped_folds(["a", "b"], [0])


def test_grouped_folds_on_cache_index(vindr_dir, tmp_path):
    index = build_cache(vindr_dir, "train", tmp_path / "c", CFG, progress=False)
    ids = [r.study_id for r in index.rows]
    labels = [int(r.abnormal) for r in index.rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        folds = grouped_folds(ids, labels, n_folds=2)
    for train, val in folds:
        assert not {ids[i] for i in train} & {ids[i] for i in val}
