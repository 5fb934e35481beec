"""VinDr-SpineXR annotations and the preprocessed training cache.

CSV: one row per (image, radiologist, lesion) with columns ``image_id, study_id, series_id, rad_id,
lesion_type, xmin, ymin, xmax, ymax`` in any order (extra columns are ignored). A normal image has a
``No finding`` row with empty coordinates.

Duplicate reads: several radiologists may box the same lesion. For the detector, boxes of the same label
from *different* radiologists whose IoU with a group's running mean is >= ``iou_threshold`` (0.5) are
merged into one box whose coordinates are the mean of the group (greedy, in file order); its ``rad_id``
joins the readers with ``+``. Boxes from the same radiologist are never merged with each other.
An image is abnormal when it has any lesion box.

Cache layout (``build_cache``)::

    cache_dir/config.json                 fingerprint of the PreprocessConfig used
    cache_dir/<split>/images/<id>.png     enhance() output (uint8 CLAHE working image)
    cache_dir/<split>/labels/<id>.txt     YOLO labels "cls cx cy w h" (normalised), empty when normal
    cache_dir/<split>/index.csv           image_id, study_id, abnormal, width, height, orig_*, n_boxes
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import yaml
from tqdm import tqdm

from spine_ui._io import atomic_write_bytes, atomic_write_json, atomic_write_text
from spine_ui.config import LESION_CLASSES, PreprocessConfig, to_dict
from spine_ui.core.preprocess import enhance

REQUIRED_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "image_id", "rad_id", "lesion_type",
                                     "xmin", "ymin", "xmax", "ymax")
NO_FINDING = "No finding"
SPLITS: tuple[str, ...] = ("train", "test")
INDEX_COLUMNS: tuple[str, ...] = ("image_id", "study_id", "abnormal", "width", "height",
                                  "orig_width", "orig_height", "n_boxes")


@dataclass(frozen=True)
class Box:
    """A lesion box in pixels of the image it refers to (``xmax``/``ymax`` are the far edges)."""

    label: str
    xmin: float
    ymin: float
    xmax: float
    ymax: float
    rad_id: str = ""

    @property
    def area(self) -> float:
        """Box area in pixels (0 when degenerate)."""
        return max(0.0, self.xmax - self.xmin) * max(0.0, self.ymax - self.ymin)

    def scaled(self, sx: float, sy: float) -> "Box":
        """The box with x scaled by ``sx`` and y by ``sy``."""
        return Box(self.label, self.xmin * sx, self.ymin * sy, self.xmax * sx, self.ymax * sy, self.rad_id)


@dataclass
class ImageRecord:
    """One image of an annotation CSV with its (merged) lesion boxes."""
    image_id: str
    study_id: str
    series_id: str
    boxes: list[Box] = field(default_factory=list)
    abnormal: bool = False


# --------------------------------------------------------------------------- CSV
def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (``spine_ui.train.metrics.box_iou``: torchvision)."""
    from spine_ui.train.metrics import box_iou

    return float(box_iou(_xyxy([a]), _xyxy([b]))[0, 0])


def merge_duplicates(boxes: Sequence[Box], iou_threshold: float = 0.5) -> list[Box]:
    """Merge same-label boxes of different radiologists (IoU >= threshold) into their mean box."""
    from spine_ui.train.metrics import box_iou

    groups: list[list[Box]] = []
    means: list[Box] = []
    for b in boxes:
        best = -1
        if means:
            v = box_iou(_xyxy([b]), _xyxy(means))[0]
            free = np.array([m.label == b.label and all(x.rad_id != b.rad_id for x in g)
                             for g, m in zip(groups, means)])
            v = np.where(free, v, -1.0)
            if v.max() >= iou_threshold:
                best = int(np.flatnonzero(v == v.max())[-1])  # ties: the later group, as a sequential scan
        if best < 0:
            groups.append([b])
            means.append(b)
        else:
            groups[best].append(b)
            means[best] = _mean_box(groups[best])
    return means


def _xyxy(boxes: Sequence[Box]) -> np.ndarray:
    return np.array([[b.xmin, b.ymin, b.xmax, b.ymax] for b in boxes], dtype=np.float64)


def _mean_box(group: Sequence[Box]) -> Box:
    c = np.mean([[b.xmin, b.ymin, b.xmax, b.ymax] for b in group], axis=0)
    rads = "+".join(sorted({b.rad_id for b in group if b.rad_id}))
    return Box(group[0].label, *(float(v) for v in c), rad_id=rads)


def _parse_box(row: dict[str, str], line: int) -> Box | None:
    label = row["lesion_type"]
    try:
        x0, y0, x1, y1 = (float(row[k]) for k in ("xmin", "ymin", "xmax", "ymax"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"line {line}: lesion {label!r} needs numeric xmin, ymin, xmax, ymax") from exc
    if not np.isfinite([x0, y0, x1, y1]).all():
        raise ValueError(f"line {line}: non-finite box coordinates")
    x0, x1 = sorted((x0, x1))
    y0, y1 = sorted((y0, y1))
    if x1 <= x0 or y1 <= y0:
        return None  # zero-area box: nothing to learn from
    return Box(label, x0, y0, x1, y1, row.get("rad_id", ""))


def read_annotations(csv_path: str | os.PathLike, *, merge: bool = True,
                     iou_threshold: float = 0.5) -> list[ImageRecord]:
    """Parse a VinDr-SpineXR annotation CSV into one record per image (in order of first appearance).

    Raises ``ValueError`` naming missing columns, unknown lesion types (listing the valid ones),
    non-numeric coordinates, or an image listed under two studies.
    """
    valid = set(LESION_CLASSES) | {NO_FINDING}
    records: dict[str, ImageRecord] = {}
    with open(csv_path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        header = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{Path(csv_path).name}: missing column(s) {', '.join(missing)}; "
                             f"expected {', '.join(REQUIRED_COLUMNS)}")
        reader.fieldnames = header
        for line, row in enumerate(reader, start=2):
            row = {k: (v or "").strip() for k, v in row.items() if k is not None}
            image_id, label = row.get("image_id", ""), row.get("lesion_type", "")
            if not image_id:
                raise ValueError(f"line {line}: empty image_id")
            if label not in valid:
                raise ValueError(f"line {line}: unknown lesion type {label!r}; valid: "
                                 f"{', '.join((*LESION_CLASSES, NO_FINDING))}")
            rec = records.get(image_id)
            if rec is None:
                rec = records[image_id] = ImageRecord(image_id, row.get("study_id", ""), row.get("series_id", ""))
            elif rec.study_id != row.get("study_id", ""):
                raise ValueError(f"line {line}: image {image_id} appears under two studies")
            if label != NO_FINDING:
                box = _parse_box(row, line)
                if box is not None:
                    rec.boxes.append(box)
    for rec in records.values():
        if merge:
            rec.boxes = merge_duplicates(rec.boxes, iou_threshold)
        rec.abnormal = bool(rec.boxes)
    return list(records.values())


# --------------------------------------------------------------------------- YOLO labels
def box_to_yolo(box: Box, width: float, height: float) -> tuple[int, float, float, float, float]:
    """Pixel box -> (class index, cx, cy, w, h) normalised by the image size."""
    cls = LESION_CLASSES.index(box.label)
    return (cls, (box.xmin + box.xmax) / 2 / width, (box.ymin + box.ymax) / 2 / height,
            (box.xmax - box.xmin) / width, (box.ymax - box.ymin) / height)


def yolo_to_box(yolo: Sequence[float], width: float, height: float, rad_id: str = "") -> Box:
    """Inverse of :func:`box_to_yolo`."""
    cls, cx, cy, w, h = yolo
    return Box(LESION_CLASSES[int(cls)], (cx - w / 2) * width, (cy - h / 2) * height,
               (cx + w / 2) * width, (cy + h / 2) * height, rad_id)


def _clip(box: Box, width: int, height: int) -> Box | None:
    x0, x1 = np.clip([box.xmin, box.xmax], 0, width)
    y0, y1 = np.clip([box.ymin, box.ymax], 0, height)
    if x1 - x0 < 1e-6 or y1 - y0 < 1e-6:
        return None
    return Box(box.label, float(x0), float(y0), float(x1), float(y1), box.rad_id)


def label_text(boxes: Iterable[Box], width: int, height: int) -> str:
    """YOLO label file content for boxes in working-image pixels (clipped to the image)."""
    lines = []
    for b in boxes:
        c = _clip(b, width, height)
        if c is not None:
            cls, cx, cy, w, h = box_to_yolo(c, width, height)
            lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return "".join(line + "\n" for line in lines)


def read_labels(path: str | os.PathLike, width: int, height: int) -> list[Box]:
    """Boxes (working-image pixels) from a YOLO label file."""
    out = []
    for line in Path(path).read_text().splitlines():
        if line.strip():
            parts = line.split()
            out.append(yolo_to_box((int(parts[0]), *map(float, parts[1:5])), width, height))
    return out


# --------------------------------------------------------------------------- cache
@dataclass(frozen=True)
class CacheRow:
    """One ``index.csv`` row: ids, label, working and original image sizes, box count."""
    image_id: str
    study_id: str
    abnormal: bool
    width: int
    height: int
    orig_width: int
    orig_height: int
    n_boxes: int


@dataclass
class CacheIndex:
    """The cached split: rows in annotation order, and how many images were (re)built or reused."""

    root: Path  # cache_dir/<split>
    split: str
    rows: list[CacheRow]
    built: int = 0
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.rows)

    def image_path(self, image_id: str) -> Path:
        """The cached enhanced PNG of ``image_id``."""
        return self.root / "images" / f"{image_id}.png"

    def label_path(self, image_id: str) -> Path:
        """The YOLO label file of ``image_id``."""
        return self.root / "labels" / f"{image_id}.txt"


def config_fingerprint(cfg: PreprocessConfig) -> str:
    """SHA-256 of the preprocessing config (canonical JSON)."""
    return hashlib.sha256(json.dumps(to_dict(cfg), sort_keys=True).encode()).hexdigest()


def _check_config(cache_dir: Path, cfg: PreprocessConfig) -> None:
    """Wipe the cached splits when the cache was built with another config; record the current one."""
    path = cache_dir / "config.json"
    fp = config_fingerprint(cfg)
    try:
        old = json.loads(path.read_text()).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        old = None
    if old == fp:
        return
    for split in SPLITS:
        if (cache_dir / split).is_dir():
            shutil.rmtree(cache_dir / split)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"fingerprint": fp, "preprocess": to_dict(cfg)}, sort_keys=True)


def _read_index(path: Path) -> dict[str, CacheRow]:
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        return {r["image_id"]: CacheRow(r["image_id"], r["study_id"], r["abnormal"] == "1",
                                        *(int(r[k]) for k in INDEX_COLUMNS[3:]))
                for r in csv.DictReader(fh)}


def _write_if_changed(path: Path, text: str) -> None:
    if path.exists() and path.read_text() == text:
        return  # unchanged: keep the mtime
    atomic_write_text(path, text)


def _build_image(src: Path, dst: Path, cfg: PreprocessConfig) -> tuple[int, int, int, int]:
    """Decode + enhance one DICOM into ``dst``; returns (width, height, orig_width, orig_height)."""
    from spine_ui.core.decode import decode_file

    study = decode_file(src)
    work = enhance(study.pixels, cfg)
    ok, png = cv2.imencode(".png", work)
    if not ok:
        raise OSError(f"could not encode {dst.name}")
    atomic_write_bytes(dst, png.tobytes())
    oh, ow = study.pixels.shape
    h, w = work.shape
    return w, h, ow, oh


def build_cache(data_dir: str | os.PathLike, split: str, cache_dir: str | os.PathLike,
                cfg: PreprocessConfig = PreprocessConfig(), progress: bool = True) -> CacheIndex:
    """Decode, enhance and label every image of a VinDr-SpineXR split into ``cache_dir``.

    Images whose PNG and index entry exist (built with the same config fingerprint) are reused; label
    files are rewritten only when their content changes. Boxes are scaled from original pixels to the
    working image by the ratio of the two shapes.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    data_dir, cache_dir = Path(data_dir), Path(cache_dir)
    records = read_annotations(data_dir / "annotations" / f"{split}.csv")
    _check_config(cache_dir, cfg)
    root = cache_dir / split
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    old = _read_index(root / "index.csv")
    index = CacheIndex(root, split, [])
    for rec in tqdm(records, desc=f"cache {split}", unit="img", disable=not progress):
        png = index.image_path(rec.image_id)
        prev = old.get(rec.image_id)
        if prev is not None and png.exists():
            w, h, ow, oh = prev.width, prev.height, prev.orig_width, prev.orig_height
            index.skipped += 1
        else:
            src = data_dir / f"{split}_images" / f"{rec.image_id}.dicom"
            if not src.exists():
                raise FileNotFoundError(f"image {rec.image_id} listed in {split}.csv has no file {src}")
            w, h, ow, oh = _build_image(src, png, cfg)
            index.built += 1
        boxes = [b.scaled(w / ow, h / oh) for b in rec.boxes]
        text = label_text(boxes, w, h)
        _write_if_changed(index.label_path(rec.image_id), text)
        index.rows.append(CacheRow(rec.image_id, rec.study_id, rec.abnormal, w, h, ow, oh, text.count("\n")))
    _write_index(root / "index.csv", index.rows)
    return index


def _write_index(path: Path, rows: Sequence[CacheRow]) -> None:
    lines = [",".join(INDEX_COLUMNS)]
    for r in rows:
        lines.append(f"{r.image_id},{r.study_id},{int(r.abnormal)},{r.width},{r.height},"
                     f"{r.orig_width},{r.orig_height},{r.n_boxes}")
    _write_if_changed(path, "\n".join(lines) + "\n")


def write_yolo_yaml(cache_dir: str | os.PathLike, names: Sequence[str] = LESION_CLASSES, *,
                    train: str = "train/images", val: str = "test/images") -> Path:
    """Ultralytics data yaml (``cache_dir/data.yaml``) pointing at the cached images."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    data = {"path": str(cache_dir.resolve()), "train": train, "val": val,
            "nc": len(names), "names": {i: n for i, n in enumerate(names)}}
    out = cache_dir / "data.yaml"
    out.write_text(yaml.safe_dump(data, sort_keys=False))
    return out
