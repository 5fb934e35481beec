"""A synthetic dataset in the exact VinDr-SpineXR layout (for tests, demos and smoke training).

::

    out_dir/annotations/train.csv   study_id,series_id,image_id,rad_id,lesion_type,xmin,ymin,xmax,ymax
    out_dir/annotations/test.csv
    out_dir/train_images/<image_id>.dicom
    out_dir/test_images/<image_id>.dicom

As in VinDr-SpineXR: ids are 32-digit hex strings; a normal image has one ``No finding`` row with empty
coordinates; boxes are floats in original pixels; some abnormal images were read by two radiologists, giving
near-duplicate boxes under different ``rad_id``; some studies hold two images (AP + lateral), and the
train/test split is by study. DICOMs are 12-bit, JPEG 2000 lossless or uncompressed, MONOCHROME1 or
MONOCHROME2, without Modality or BodyPartExamined. Pixels and CSVs are deterministic for a seed (SOP
instance UIDs and dates written by the DICOM writer are not).
"""
from __future__ import annotations

import csv
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.uid import generate_uid
from tqdm import tqdm

from spine_ui.config import LESION_CLASSES
from spine_ui.synth.dicom_writer import write_dicom
from spine_ui.synth.phantom import render_spine, to_stored

CSV_COLUMNS: tuple[str, ...] = ("study_id", "series_id", "image_id", "rad_id", "lesion_type",
                                "xmin", "ymin", "xmax", "ymax")
NO_FINDING = "No finding"
SPLITS: tuple[str, ...] = ("train", "test")
_CODECS = (("jpeg2000", "MONOCHROME2"), ("jpeg2000", "MONOCHROME1"),
           ("explicit", "MONOCHROME2"), ("explicit", "MONOCHROME1"))


@dataclass
class DatasetSummary:
    """What ``make_dataset`` wrote, per split."""

    root: Path
    images: dict[str, int] = field(default_factory=dict)
    studies: dict[str, int] = field(default_factory=dict)
    abnormal: dict[str, int] = field(default_factory=dict)
    double_read: dict[str, int] = field(default_factory=dict)  # abnormal images read by two radiologists
    lesions: dict[str, dict[str, int]] = field(default_factory=dict)  # split -> lesion type -> images

    def __str__(self) -> str:
        lines = [f"synthetic VinDr-SpineXR dataset at {self.root}"]
        for s in SPLITS:
            per = ", ".join(f"{k}={v}" for k, v in self.lesions.get(s, {}).items() if v)
            lines.append(f"  {s}: {self.images.get(s, 0)} images / {self.studies.get(s, 0)} studies, "
                         f"{self.abnormal.get(s, 0)} abnormal ({self.double_read.get(s, 0)} double-read); {per}")
        return "\n".join(lines)


@dataclass
class _Image:
    study_id: str
    series_id: str
    image_id: str
    view: str
    lesions: list[str]
    double_read: bool = False


def _hex(rng: np.random.Generator) -> str:
    return rng.bytes(16).hex()


def _lesion_sets(rng: np.random.Generator, n_abnormal: int) -> list[list[str]]:
    """1-3 lesion types per abnormal image; every type appears when n_abnormal >= 3."""
    sets: list[list[str]] = [[] for _ in range(n_abnormal)]
    if not n_abnormal:
        return sets
    for i, c in enumerate(rng.permutation(len(LESION_CLASSES))):
        if len(sets[i % n_abnormal]) < 3:
            sets[i % n_abnormal].append(LESION_CLASSES[int(c)])
    for s in sets:
        want = int(rng.choice([1, 2, 3], p=[0.5, 0.35, 0.15]))
        while len(s) < want:
            c = LESION_CLASSES[int(rng.integers(len(LESION_CLASSES)))]
            if c not in s:
                s.append(c)
    return [sets[int(i)] for i in rng.permutation(n_abnormal)]


def _plan(rng: np.random.Generator, n: int, test_fraction: float, abnormal_fraction: float
          ) -> dict[str, list[_Image]]:
    """Studies (some with two views), split by study, with lesion sets per image."""
    studies: list[list[str]] = []
    left = n
    while left > 0:
        two = left >= 2 and (rng.random() < 0.3 or (n >= 4 and not studies))  # at least one 2-view study
        studies.append(["AP", "lateral"] if two else [str(rng.choice(["AP", "lateral"]))])
        left -= len(studies[-1])
    studies = [studies[int(i)] for i in rng.permutation(len(studies))]
    n_abn = int(round(abnormal_fraction * n))
    sets = iter(_lesion_sets(rng, n_abn))
    abnormal = np.zeros(n, bool)
    abnormal[rng.permutation(n)[:n_abn]] = True
    double = abnormal & (rng.random(n) < 0.35)
    if n_abn and not double.any():  # some images are always double-read
        double[np.flatnonzero(abnormal)[0]] = True
    n_test = int(round(test_fraction * len(studies)))
    if 0 < test_fraction and len(studies) >= 2:
        n_test = min(max(n_test, 1), len(studies) - 1)
    test_studies = set(int(i) for i in rng.permutation(len(studies))[:n_test])
    out: dict[str, list[_Image]] = {s: [] for s in SPLITS}
    k = 0
    for si, views in enumerate(studies):
        study_id = _hex(rng)
        series = [_hex(rng)] * len(views) if rng.random() < 0.5 else [_hex(rng) for _ in views]
        for view, series_id in zip(views, series):
            lesions = next(sets) if abnormal[k] else []
            out["test" if si in test_studies else "train"].append(
                _Image(study_id, series_id, _hex(rng), view, lesions, bool(double[k])))
            k += 1
    return out


def _rows(rng: np.random.Generator, im: _Image, boxes, shape: tuple[int, int], n_readers: int) -> list[list]:
    """CSV rows of one image: one or two radiologists, near-duplicate boxes for the second."""
    readers = [f"rad{i + 1}" for i in rng.permutation(max(n_readers, 1))]
    if not boxes:
        return [[im.study_id, im.series_id, im.image_id, readers[0], NO_FINDING, "", "", "", ""]]
    n_reads = 2 if (len(readers) > 1 and im.double_read) else 1
    h, w = shape
    jitter = max(1.0, 0.006 * max(h, w))
    rows = []
    for r in range(n_reads):
        for label, (x0, y0, x1, y1) in boxes:
            if r:
                x0, y0, x1, y1 = np.asarray((x0, y0, x1, y1)) + rng.uniform(-jitter, jitter, 4)
                x0, x1 = float(np.clip(x0, 0, w - 1)), float(np.clip(x1, x0 + 1, w))
                y0, y1 = float(np.clip(y0, 0, h - 1)), float(np.clip(y1, y0 + 1, h))
            rows.append([im.study_id, im.series_id, im.image_id, readers[r], label,
                         *(f"{float(v):.3f}" for v in (x0, y0, x1, y1))])
    return rows


def _write_image(path: Path, img: np.ndarray, codec: tuple[str, str], im: _Image, windowed: bool) -> None:
    syntax, photometric = codec
    stored = to_stored(img, 12, monochrome1=photometric == "MONOCHROME1")
    extra = {"StudyInstanceUID": generate_uid(entropy_srcs=[im.study_id]),
             "SeriesInstanceUID": generate_uid(entropy_srcs=[im.series_id])}
    write_dicom(path, stored, bits_stored=12, photometric=photometric, transfer_syntax=syntax,
                window=(2047.5, 4096.0) if windowed else None, modality=None, body_part=None, extra=extra)


def make_dataset(out_dir: str | Path, n: int, *, seed: int = 0, test_fraction: float = 0.25,
                 height: int = 512, abnormal_fraction: float = 0.5, n_readers: int = 3,
                 progress: bool | None = None) -> DatasetSummary:
    """Write ``n`` phantom radiographs with VinDr-SpineXR annotations under ``out_dir``.

    ``progress``: tqdm bar; ``None`` shows it only when stderr is a terminal.
    """
    if n < 1:
        raise ValueError("n must be at least 1")
    if not 0.0 <= test_fraction < 1.0 or not 0.0 <= abnormal_fraction <= 1.0:
        raise ValueError("test_fraction must be in [0, 1) and abnormal_fraction in [0, 1]")
    root = Path(out_dir)
    rng = np.random.default_rng(seed)
    plan = _plan(rng, n, test_fraction, abnormal_fraction)
    codecs = [_CODECS[i % len(_CODECS)] for i in range(n)]
    codecs = [codecs[int(i)] for i in rng.permutation(n)]
    show = sys.stderr.isatty() if progress is None else progress
    summary = DatasetSummary(root=root)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=n, desc="synth", unit="img", disable=not show)
    k = 0
    for split in SPLITS:
        img_dir = root / f"{split}_images"
        img_dir.mkdir(parents=True, exist_ok=True)
        rows: list[list] = []
        counts = dict.fromkeys(LESION_CLASSES, 0)
        abnormal = double = 0
        for im in plan[split]:
            img, boxes = render_spine(np.random.default_rng(rng.integers(2**63)), im.lesions,
                                      height=height, view=im.view)
            _write_image(img_dir / f"{im.image_id}.dicom", img, codecs[k], im, bool(rng.random() < 0.5))
            k += 1
            image_rows = _rows(rng, im, boxes, img.shape, n_readers)
            rows += image_rows
            abnormal += bool(boxes)
            double += len({r[3] for r in image_rows}) > 1
            for c in {b[0] for b in boxes}:
                counts[c] += 1
            bar.update(1)
        with open(root / "annotations" / f"{split}.csv", "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
        summary.images[split] = len(plan[split])
        summary.studies[split] = len({im.study_id for im in plan[split]})
        summary.abnormal[split] = abnormal
        summary.double_read[split] = double
        summary.lesions[split] = counts
    bar.close()
    return summary
