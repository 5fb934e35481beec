"""Site recalibration: a site's reviewed cases -> a NEW bundle version whose calibration and gate fit the site.

Input (``read_site_cases``), either
- a worklist export (CSV or JSON, ``services.batch.to_csv`` / ``to_json``) with review marks: a case's truth is
  the verdict when the reviewer marked ``agree`` and the opposite when ``disagree``; rows without a mark, or
  rejected / unreadable, are skipped; ``probability`` is the one the bundle reported; or
- a CSV with the columns ``key`` (sha256 of the image file's content), ``truth`` (1 abnormal, 0 normal) and
  ``probability`` (the bundle's reported ``probability`` for that image); other columns are ignored.

Fit (``recalibrate``): Platt scaling (``core.calibration.PlattScaling``, it has a bias: a site's systematic
shift is what it must undo) of the truth on the logit of the reported probability; the gate is Youden's J on
the recalibrated probabilities, with a percentile bootstrap interval (cases resampled, calibrator held fixed).
The site step is composed with any earlier site step into one Platt map (both are affine on the logit), so the
probabilities must be the ones the input bundle reports. Below ``min_per_class`` cases of either class the
recalibration is refused.

Output (``write_site_bundle``): a copy of the bundle with the manifest's calibration, gate, name, version and
provenance updated and every hash recomputed by ``bundle.manifest.write_manifest``; the original is untouched.
"""
from __future__ import annotations

import csv
import datetime as _dt
import io
import json
import shutil
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from spine_ui._io import atomic_dir
from spine_ui.core.calibration import (BundleCalibration, Calibrator, PlattScaling, TemperatureScaling, logit,
                                       reliability)
from spine_ui.errors import CalibrationDataError

MIN_PER_CLASS = 20
TRUTH_COLUMNS = ("key", "truth", "probability")


@dataclass(frozen=True)
class SiteCases:
    probabilities: np.ndarray  # the bundle's reported probabilities
    truth: np.ndarray  # 0/1
    source: str  # "worklist reviews" | "truth csv"
    skipped: int = 0  # rows without a usable mark / probability
    bundle: dict[str, Any] | None = None  # name/version from a JSON worklist export, when present


@dataclass(frozen=True)
class SiteFit:
    site: PlattScaling  # applied to the logit of the bundle's probability before the site step
    gate: float
    gate_ci: tuple[float, float]
    gate_before: float
    n: int
    n_abnormal: int
    ece_before: float
    ece_after: float
    youden: dict[str, float]

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "n_abnormal": self.n_abnormal, "n_normal": self.n - self.n_abnormal,
                "gate": self.gate, "gate_ci95": list(self.gate_ci), "gate_before": self.gate_before,
                "ece_before": round(self.ece_before, 6), "ece_after": round(self.ece_after, 6),
                "youden": self.youden, "method": "Platt scaling on the logit of the reported probability"}


# --------------------------------------------------------------------------- reading
def read_site_cases(text: str | bytes) -> SiteCases:
    """Parse either input format (see the module docstring)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8-sig")
    stripped = text.lstrip("\ufeff \r\n\t")
    if not stripped:
        raise CalibrationDataError("The reviews file is empty.")
    if not stripped.startswith(("{", "[")):
        header = next(csv.reader(io.StringIO(stripped)), [])
        if "truth" in [h.strip().lower() for h in header]:
            return _truth_csv(stripped)
    return _worklist(stripped)


def _truth_csv(text: str) -> SiteCases:
    rows = list(csv.DictReader(io.StringIO(text)))
    rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in r.items()} for r in rows]
    missing = [c for c in TRUTH_COLUMNS if rows and c not in rows[0]]
    if missing or not rows:
        raise CalibrationDataError(f"The truth CSV needs the columns {', '.join(TRUTH_COLUMNS)} "
                                   f"(missing: {', '.join(missing) or 'every row'}).")
    p, y = [], []
    for i, r in enumerate(rows, start=2):
        if r["truth"] not in ("0", "1"):
            raise CalibrationDataError(f"Line {i}: truth must be 0 or 1.")
        p.append(_probability(r["probability"], i))
        y.append(int(r["truth"]))
    return SiteCases(np.array(p), np.array(y), "truth csv")


def _worklist(text: str) -> SiteCases:
    from spine_ui.services.batch import read_reviews

    try:
        rows = read_reviews(text)
    except (ValueError, KeyError, TypeError) as exc:
        raise CalibrationDataError(f"The file is neither a worklist export nor a truth CSV ({exc}).") from exc
    bundle = None
    if text.lstrip().startswith("{"):
        bundle = (json.loads(text).get("bundle") or None)
    p, y, skipped = [], [], 0
    for r in rows:
        if r.review not in ("agree", "disagree") or r.verdict not in ("abnormal", "normal") or r.probability is None:
            skipped += 1
            continue
        called = r.verdict == "abnormal"
        p.append(_probability(r.probability, None))
        y.append(int(called if r.review == "agree" else not called))
    return SiteCases(np.array(p), np.array(y, dtype=int), "worklist reviews", skipped, bundle)


def _probability(v: Any, line: int | None) -> float:
    try:
        p = float(v)
    except (TypeError, ValueError):
        p = float("nan")
    if not 0.0 <= p <= 1.0:
        where = f"Line {line}: " if line else ""
        raise CalibrationDataError(f"{where}probability must be a number between 0 and 1.")
    return p


# --------------------------------------------------------------------------- fitting
def recalibrate(cases: SiteCases, gate_before: float, *, min_per_class: int = MIN_PER_CLASS,
                n_boot: int = 2000, seed: int = 42, C: float = 1.0) -> SiteFit:
    """Platt-fit the site's truth on the reported probabilities; gate = Youden's J on the result."""
    from spine_ui.train.metrics import youden_threshold

    y, p = cases.truth, cases.probabilities
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if min(n_pos, n_neg) < min_per_class:
        raise CalibrationDataError(
            f"Too few reviewed cases to recalibrate: {n_pos} abnormal and {n_neg} normal; at least "
            f"{min_per_class} of each are needed (--min-per-class).")
    site = PlattScaling.fit(logit(p), y, C=C)
    q = site.apply(logit(p))
    yj = youden_threshold(y, q)
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y), len(y))
        if 0 < y[idx].sum() < len(idx):
            boots.append(youden_threshold(y[idx], q[idx])["threshold"])
    lo, hi = np.percentile(boots, [2.5, 97.5]) if boots else (float("nan"), float("nan"))
    return SiteFit(site, round(float(yj["threshold"]), 6), (round(float(lo), 6), round(float(hi), 6)),
                   float(gate_before), len(y), n_pos, reliability(y, p).ece, reliability(y, q).ece,
                   {k: float(v) for k, v in yj.items()})


def _as_platt(cal: Calibrator) -> PlattScaling:
    if isinstance(cal, TemperatureScaling):
        return PlattScaling(1.0 / cal.temperature, 0.0)
    return cal


def compose(first: Calibrator | None, then: PlattScaling) -> PlattScaling:
    """One Platt map equal to ``then`` applied after ``first`` (both affine on the logit)."""
    if first is None:
        return then
    a = _as_platt(first)
    return PlattScaling(then.slope * a.slope, then.slope * a.intercept + then.intercept)


# --------------------------------------------------------------------------- writing
def write_site_bundle(bundle_dir: Path, out_dir: Path, fit: SiteFit, cases: SiteCases,
                      reviews_sha256: str | None = None) -> Path:
    """Copy ``bundle_dir`` to ``out_dir`` (which must not exist) with the site calibration and gate."""
    from spine_ui.bundle.manifest import read_manifest, verify, write_manifest

    bundle_dir, out_dir = Path(bundle_dir), Path(out_dir)
    if out_dir.exists():
        raise CalibrationDataError(f"'{out_dir.name}' already exists; choose a new --out (the original bundle "
                                   "is never overwritten).")
    man = read_manifest(bundle_dir)
    verify(bundle_dir, man)
    if cases.bundle and cases.bundle.get("version") not in (None, man.version):
        raise CalibrationDataError(
            f"The reviews were exported with bundle version {cases.bundle.get('version')!r}, not "
            f"{man.version!r}: their probabilities are on another scale.")
    now = _dt.datetime.now(_dt.timezone.utc)
    old = man.calibration or BundleCalibration({}, None, None, {})
    info = {**fit.to_json(), "source": cases.source, "skipped_rows": cases.skipped, "reviews_sha256": reviews_sha256,
            "base_bundle": {"name": man.name, "version": man.version}, "created": now.isoformat(timespec="seconds")}
    man.calibration = old.with_site(compose(old.site, fit.site), info)
    man.triage = replace(man.triage, gate=fit.gate)
    man.provenance = {**man.provenance, "site_calibration": info}
    man.metrics = {**man.metrics, "site_calibration": {k: info[k] for k in ("n", "gate", "gate_ci95", "ece_before",
                                                                            "ece_after")}}
    man.version = f"{man.version}+site.{now:%Y%m%d%H%M%S}"
    man.name = out_dir.name
    with atomic_dir(out_dir, replace=False) as tmp:  # a failed write leaves nothing behind
        shutil.copytree(bundle_dir, tmp, dirs_exist_ok=True)
        write_manifest(tmp, man)
        verify(tmp, read_manifest(tmp))
    return out_dir


def sha256_text(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


__all__: Sequence[str] = ("MIN_PER_CLASS", "SiteCases", "SiteFit", "compose", "read_site_cases", "recalibrate",
                          "write_site_bundle")
