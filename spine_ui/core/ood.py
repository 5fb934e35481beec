"""Feature-space outlier statistics: a Mahalanobis distance of pooled ensemble features from the training
radiographs, fitted in training (cross-fitted threshold), stored in the bundle, scored by the gate."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from spine_ui.errors import BundleError


def ordinal(p: float) -> str:
    """99.0 -> "99th", 95.5 -> "95.5th", 1 -> "1st"."""
    if not float(p).is_integer():
        return f"{p:g}th"
    n = int(p)
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


_OOD_KEYS = ("mean", "scale", "components", "location", "precision", "threshold", "percentile", "n_train",
             "residual_scale")


class FeatureOOD:
    """Mahalanobis out-of-distribution test on standardised image features.

    ``fit`` standardises the training features, projects them on k = min(max_components, (M - 1) // 2, D)
    principal components (M: the images each fit sees, below) and estimates a Ledoit-Wolf shrunk covariance
    there (stable for small N). The distance adds the part of a sample outside that subspace (reconstruction
    error, scaled so a typical training residual weighs like the k in-subspace dimensions): without it a
    shift orthogonal to the kept components would go unseen.

    The threshold is a percentile of the training images' distances, each measured *out of sample*: the
    statistics are fitted on K - 1 folds of the training features and the held-out fold is scored (cross-
    fitting, K = ``folds``). In-sample distances are far smaller than a new image's when N is not much larger
    than D (the fitted subspace and residual scale are tuned to those very images), and a threshold taken
    from them would reject unseen radiographs of the training distribution.
    """

    def __init__(self, mean: np.ndarray, scale: np.ndarray, components: np.ndarray, location: np.ndarray,
                 precision: np.ndarray, threshold: float, percentile: float, n_train: int,
                 residual_scale: float = 0.0) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.components = np.asarray(components, dtype=np.float64)
        self.location = np.asarray(location, dtype=np.float64)
        self.precision = np.asarray(precision, dtype=np.float64)
        self.threshold = float(threshold)
        self.percentile = float(percentile)
        self.n_train = int(n_train)
        self.residual_scale = float(residual_scale)  # mean squared training residual; 0 disables the term
        self._validate()

    # ------------------------------------------------------------------ construction

    @classmethod
    def fit(cls, features: np.ndarray, percentile: float = 99.0, max_components: int = 64, folds: int = 5,
            seed: int = 0) -> "FeatureOOD":
        """Fit on N x D training features (N >= 2, all finite); threshold from cross-fitted distances
        (``folds`` < 2, or N < 3: from in-sample distances)."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2 or x.shape[1] < 1:
            raise ValueError(f"need an N x D feature matrix with N >= 2, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("training features contain NaN or infinity")
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        n = x.shape[0]
        folds = min(int(folds), n) if n >= 3 else 1
        parts = np.array_split(np.random.default_rng(seed).permutation(n), folds) if folds >= 2 else []
        n_fit = n - max((len(p) for p in parts), default=0)
        # the same k for the fold fits and the final fit, so their distances are on one scale
        k = int(max(1, min(max_components, (n_fit - 1) // 2, x.shape[1])))
        ood = cls._fit_statistics(x, k, percentile)
        if parts:
            held_out = np.empty(n)
            for part in parts:
                rest = np.ones(n, dtype=bool)
                rest[part] = False
                held_out[part] = cls._fit_statistics(x[rest], k, percentile).distance(x[part])
        else:
            held_out = ood.distance(x)
        ood.threshold = float(np.percentile(held_out, percentile))
        return ood

    @classmethod
    def _fit_statistics(cls, x: np.ndarray, k: int, percentile: float) -> "FeatureOOD":
        """Standardisation, k principal components, Ledoit-Wolf covariance and residual scale (threshold 0)."""
        from sklearn.covariance import LedoitWolf
        from sklearn.decomposition import PCA

        mean = x.mean(axis=0)
        scale = x.std(axis=0)
        scale[scale < 1e-12] = 1.0
        z = (x - mean) / scale
        pca = PCA(n_components=k, svd_solver="full").fit(z)
        # PCA centres internally; z is already centred, so the projection is z @ components.T.
        proj = z @ pca.components_.T
        lw = LedoitWolf().fit(proj)
        residual = z - proj @ pca.components_
        return cls(mean, scale, pca.components_, lw.location_, lw.precision_, 0.0, percentile, x.shape[0],
                   float(np.mean(np.sum(residual ** 2, axis=1))))

    def _validate(self) -> None:
        d = self.mean.shape[0] if self.mean.ndim == 1 else -1
        k = self.components.shape[0] if self.components.ndim == 2 else -1
        ok = (
            d > 0 and k > 0
            and self.scale.shape == (d,)
            and self.components.shape == (k, d)
            and self.location.shape == (k,)
            and self.precision.shape == (k, k)
            and all(np.isfinite(a).all() for a in (self.mean, self.scale, self.components, self.location,
                                                     self.precision))
            and math.isfinite(self.threshold)
            and math.isfinite(self.residual_scale) and self.residual_scale >= 0
            and self.n_train >= 0
        )
        if not ok:
            raise BundleError("The feature statistics in the model bundle are malformed.")

    @property
    def n_features(self) -> int:
        return int(self.mean.shape[0])

    @property
    def n_components(self) -> int:
        return int(self.components.shape[0])

    # ------------------------------------------------------------------ scoring

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distances (N,) of N x D (or a single D) features; non-finite rows score +inf."""
        x = np.asarray(features, dtype=np.float64)
        if x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.n_features:
            raise ValueError(f"expected features with {self.n_features} columns, got shape {x.shape}")
        bad = ~np.isfinite(x).all(axis=1)
        x = np.where(np.isfinite(x), x, 0.0)
        z = (x - self.mean) / self.scale
        proj = z @ self.components.T
        diff = proj - self.location
        d2 = np.einsum("ij,jk,ik->i", diff, self.precision, diff)
        if self.residual_scale > 0:
            residual = z - proj @ self.components
            d2 = d2 + self.n_components * np.sum(residual ** 2, axis=1) / self.residual_scale
        dist = np.sqrt(np.maximum(d2, 0.0))
        dist[bad] = np.inf
        return dist

    # ------------------------------------------------------------------ persistence

    def save(self, path: str | Path) -> Path:
        """Write the statistics as a numpy-only .npz (loadable with ``allow_pickle=False``)."""
        path = Path(path)
        arrays = {
            "mean": self.mean, "scale": self.scale, "components": self.components,
            "location": self.location, "precision": self.precision,
            "threshold": np.float64(self.threshold), "percentile": np.float64(self.percentile),
            "n_train": np.int64(self.n_train), "residual_scale": np.float64(self.residual_scale),
        }
        with open(path, "wb") as fh:  # a file handle keeps the exact name (no ".npz" appended)
            np.savez(fh, **arrays)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "FeatureOOD":
        """Read statistics written by ``save``; raises ``BundleError`` if the file is unusable."""
        try:
            with np.load(Path(path), allow_pickle=False) as data:
                missing = [k for k in _OOD_KEYS if k not in data.files]
                if missing:
                    raise BundleError("The feature statistics in the model bundle are incomplete.")
                arrays = {k: data[k] for k in _OOD_KEYS}
        except (OSError, ValueError) as exc:
            raise BundleError("The feature statistics in the model bundle could not be read.") from exc
        return cls(
            arrays["mean"], arrays["scale"], arrays["components"], arrays["location"], arrays["precision"],
            float(arrays["threshold"]), float(arrays["percentile"]), int(arrays["n_train"]),
            float(arrays["residual_scale"]),
        )
