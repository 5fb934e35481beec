"""Probability calibration: temperature scaling and Platt scaling on logits, ECE and reliability diagrams.

- ``TemperatureScaling``: p = sigmoid(z / T), T > 0 fitted by minimising the negative log-likelihood (NLL)
  with ``scipy.optimize.minimize_scalar`` over log T (bounded: T in [0.05, 20]; perfectly separated data drive
  the unbounded optimum to T -> 0). ``z`` may be N x V (test-time views): p = mean_v sigmoid(z_v / T), the way
  a member's probability is served.
- ``PlattScaling``: p = sigmoid(a z + b), fitted with scikit-learn's ``LogisticRegression`` on the logit
  (L2, ``C`` = 1.0 by default, which keeps ``a`` finite on separable data). Unlike temperature scaling it has a
  bias, so it can undo a systematic shift (e.g. a site whose scores run high).
- ``expected_calibration_error``: equal-width bins on [0, 1] (``bins`` of them; the last bin closed),
  ECE = sum_b (n_b / N) |mean(y in b) - mean(p in b)|; empty bins contribute nothing.

Calibrations are typed frozen dataclasses with ``apply()`` and a JSON round trip (``to_json``/``from_json``)
so a bundle manifest can store them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import numpy as np

EPS = 1e-6
T_BOUNDS = (0.05, 20.0)


def sigmoid(z: np.ndarray | float) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def logit(p: np.ndarray | float) -> np.ndarray:
    """log(p / (1 - p)) with p clipped to [1e-6, 1 - 1e-6] (probabilities of exactly 0 or 1 stay finite)."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def nll(p: np.ndarray, y: np.ndarray) -> float:
    """Mean binary negative log-likelihood."""
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    y = np.asarray(y, dtype=np.float64)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def _check(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y).astype(np.float64).ravel()
    if z.shape[0] != y.shape[0] or z.ndim not in (1, 2):
        raise ValueError(f"logits {z.shape} and labels {y.shape} do not match (N or N x V logits, N labels)")
    if not np.all(np.isin(y, (0.0, 1.0))):
        raise ValueError("labels must be 0 or 1")
    if y.min() == y.max():
        raise ValueError("calibration needs both classes among the labels")
    if not np.all(np.isfinite(z)):
        raise ValueError("logits must be finite")
    return z, y


@dataclass(frozen=True)
class TemperatureScaling:
    """p = mean over views of sigmoid(z / temperature)."""

    temperature: float = 1.0
    method: str = "temperature"

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and np.isfinite(self.temperature)):
            raise ValueError(f"temperature must be positive and finite (got {self.temperature})")

    def apply(self, z: np.ndarray | float) -> np.ndarray:
        """Calibrated probabilities from logits (N, or N x V: mean over V)."""
        z = np.asarray(z, dtype=np.float64)
        p = sigmoid(z / self.temperature)
        return p.mean(axis=-1) if p.ndim == 2 else p

    @classmethod
    def fit(cls, z: np.ndarray, y: Sequence[int], bounds: tuple[float, float] = T_BOUNDS) -> "TemperatureScaling":
        """Minimise the NLL over log T (bounded scalar search)."""
        from scipy.optimize import minimize_scalar

        z, y = _check(z, y)
        res = minimize_scalar(lambda lt: nll(cls(float(np.exp(lt))).apply(z), y),
                              bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded",
                              options={"xatol": 1e-6})
        return cls(float(np.exp(res.x)))

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "temperature": self.temperature}


@dataclass(frozen=True)
class PlattScaling:
    """p = sigmoid(slope * z + intercept) (z N, or N x V: mean over V of the per-view probabilities)."""

    slope: float = 1.0
    intercept: float = 0.0
    method: str = "platt"

    def apply(self, z: np.ndarray | float) -> np.ndarray:
        z = np.asarray(z, dtype=np.float64)
        p = sigmoid(self.slope * z + self.intercept)
        return p.mean(axis=-1) if p.ndim == 2 else p

    @classmethod
    def fit(cls, z: np.ndarray, y: Sequence[int], C: float = 1.0) -> "PlattScaling":
        """Logistic regression of the label on the logit (scikit-learn, lbfgs, L2 with inverse strength C).
        N x V logits are fitted view by view (each view a sample with the image's label)."""
        from sklearn.linear_model import LogisticRegression

        z, y = _check(z, y)
        if z.ndim == 2:
            y = np.repeat(y, z.shape[1])
            z = z.ravel()
        lr = LogisticRegression(C=C, solver="lbfgs", max_iter=1000).fit(z[:, None], y.astype(int))
        return cls(float(lr.coef_[0, 0]), float(lr.intercept_[0]))

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "slope": self.slope, "intercept": self.intercept}


Calibrator = Union[TemperatureScaling, PlattScaling]


def calibrator_from_json(data: Mapping[str, Any]) -> Calibrator:
    """Read back ``to_json()`` of either calibrator."""
    method = data.get("method")
    if method == "temperature":
        return TemperatureScaling(float(data["temperature"]))
    if method == "platt":
        return PlattScaling(float(data["slope"]), float(data["intercept"]))
    raise ValueError(f"unknown calibration method {method!r} (known: temperature, platt)")


def calibrate_probability(cal: Calibrator, p: np.ndarray | float) -> np.ndarray:
    """Apply a logit-scale calibrator to probabilities (e.g. the ensemble's soft vote)."""
    return cal.apply(logit(p))


# --------------------------------------------------------------------------- ECE and reliability
@dataclass(frozen=True)
class Reliability:
    """Equal-width reliability table: per bin its edges, count, mean predicted probability and observed
    frequency (NaN for empty bins), and the ECE."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    confidence: tuple[float, ...]
    frequency: tuple[float, ...]
    ece: float

    def to_json(self) -> dict[str, Any]:
        def clean(v: Sequence[float]) -> list[float | None]:
            return [None if not np.isfinite(x) else round(float(x), 6) for x in v]

        return {"edges": list(self.edges), "counts": list(self.counts), "confidence": clean(self.confidence),
                "frequency": clean(self.frequency), "ece": round(self.ece, 6)}


def reliability(y: Sequence[int], p: Sequence[float], bins: int = 10) -> Reliability:
    """Bin ``p`` into ``bins`` equal-width bins on [0, 1] ([a, b) except the last, [a, 1])."""
    y = np.asarray(y, dtype=np.float64).ravel()
    p = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != p.shape or y.size == 0:
        raise ValueError("labels and probabilities must be non-empty and of equal length")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    counts = np.bincount(idx, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(idx, weights=p, minlength=bins) / counts
        freq = np.bincount(idx, weights=y, minlength=bins) / counts
    filled = counts > 0
    ece = float(np.sum(counts[filled] / y.size * np.abs(freq[filled] - conf[filled])))
    return Reliability(tuple(float(e) for e in edges), tuple(int(c) for c in counts),
                       tuple(float(c) for c in conf), tuple(float(f) for f in freq), ece)


def expected_calibration_error(y: Sequence[int], p: Sequence[float], bins: int = 10) -> float:
    """ECE with ``bins`` equal-width bins (see the module docstring)."""
    return reliability(y, p, bins).ece


def plot_reliability(curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: Path, title: str,
                     bins: int = 10) -> Path:
    """A reliability diagram (observed frequency vs mean predicted probability per bin, one line per named
    set of (labels, probabilities), ECE in the legend) plus a histogram of the probabilities; PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, (ax, hx) = plt.subplots(2, 1, figsize=(5.2, 6.2), dpi=110, sharex=True,
                                 gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1, label="perfect calibration")
    for name, (y, p) in curves.items():
        rel = reliability(y, p, bins)
        ok = np.asarray(rel.counts) > 0
        ax.plot(np.asarray(rel.confidence)[ok], np.asarray(rel.frequency)[ok], "o-", ms=4,
                label=f"{name} (ECE {rel.ece:.3f})")
        hx.hist(np.asarray(p, dtype=float), bins=rel.edges, histtype="step", lw=1.2, label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1.01), ylabel="observed frequency of abnormal", title=title)
    ax.legend(loc="upper left", fontsize=8)
    hx.set(xlabel="predicted probability", ylabel="images")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- a bundle's calibration
@dataclass(frozen=True)
class BundleCalibration:
    """The manifest's optional ``calibration`` entry, applied by triage in this order:

    1. ``members``: a temperature per ensemble member on each TTA view's logit (member p = mean_v
       sigmoid(z_v / T)); members without one keep T = 1;
    2. the weighted soft vote of those member probabilities;
    3. ``ensemble``: a calibrator on the logit of the vote (Platt, fitted on out-of-fold predictions);
    4. ``site``: an optional second calibrator on the logit of step 3's probability, fitted by
       ``python -m spine_ui calibrate`` on a site's reviewed cases.

    ``info`` is provenance (what it was fitted on, how many cases, ECE before/after); never used to serve.
    """

    members: Mapping[str, TemperatureScaling]
    ensemble: Calibrator | None = None
    site: Calibrator | None = None
    info: Mapping[str, Any] | None = None

    def member_probability(self, arch: str, view_logits: np.ndarray) -> np.ndarray:
        """Calibrated member probability from logits (one value, N, or N x V views: mean over V)."""
        return self.members.get(arch, TemperatureScaling(1.0)).apply(view_logits)

    def ensemble_probability(self, vote: np.ndarray | float) -> np.ndarray:
        """Steps 3 and 4 on a soft vote of calibrated members."""
        p = np.asarray(vote, dtype=np.float64)
        for cal in (self.ensemble, self.site):
            if cal is not None:
                p = calibrate_probability(cal, p)
        return p

    def with_site(self, site: Calibrator, info: Mapping[str, Any]) -> "BundleCalibration":
        return BundleCalibration(dict(self.members), self.ensemble, site, {**(self.info or {}), "site": dict(info)})

    def to_json(self) -> dict[str, Any]:
        return {"members": {a: t.to_json() for a, t in self.members.items()},
                "ensemble": self.ensemble.to_json() if self.ensemble else None,
                "site": self.site.to_json() if self.site else None,
                "info": dict(self.info or {})}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "BundleCalibration":
        members = {}
        for arch, m in (data.get("members") or {}).items():
            cal = calibrator_from_json(m)
            if not isinstance(cal, TemperatureScaling):
                raise ValueError(f"member {arch}: only temperature scaling is supported per member")
            members[str(arch)] = cal
        ens, site = data.get("ensemble"), data.get("site")
        return cls(members, calibrator_from_json(ens) if ens else None,
                   calibrator_from_json(site) if site else None, dict(data.get("info") or {}))
