"""Phantom anatomy: drawing primitives, the vertebral column, soft tissue and acquisition settings of one
synthetic spine radiograph (see ``phantom`` for the whole picture)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np


Box = tuple[float, float, float, float]
VIEWS: tuple[str, ...] = ("AP", "lateral")

SUB = 4  # sub-pixel bits for cv2.fillPoly
GEOMETRIC = ("Disc space narrowing", "Vertebral collapse", "Spondylolysthesis")
METAL = 3.5  # attenuation of implant metal (saturates)



# --------------------------------------------------------------------------- drawing primitives
def chaikin(p: np.ndarray, n: int = 2) -> np.ndarray:
    """Corner-cutting smoothing of a closed polygon."""
    for _ in range(n):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, 2)
    return p


def ellipse(uc: float, vc: float, au: float, av: float, n: int = 36) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([uc + au * np.cos(t), vc + av * np.sin(t)], axis=1)


def raster(shape: tuple[int, int], polys: Sequence[tuple[np.ndarray, float]], pad: int = 2):
    """Anti-aliased coverage in [0, 1] of polygons (image coords) drawn in order with the given values,
    on the crop that bounds them. Returns ``((slice_y, slice_x), coverage)`` or ``None`` if off-image."""
    h, w = shape
    pts = np.concatenate([p for p, _ in polys])
    x0 = max(int(np.floor(pts[:, 0].min())) - pad, 0)
    y0 = max(int(np.floor(pts[:, 1].min())) - pad, 0)
    x1 = min(int(np.ceil(pts[:, 0].max())) + pad + 1, w)
    y1 = min(int(np.ceil(pts[:, 1].max())) + pad + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    crop = np.zeros((y1 - y0, x1 - x0), np.uint8)
    for poly, val in polys:
        q = np.round((poly - (x0, y0)) * (1 << SUB)).astype(np.int32)
        cv2.fillPoly(crop, [q], int(round(255 * val)), cv2.LINE_AA, shift=SUB)
    return (slice(y0, y1), slice(x0, x1)), crop.astype(np.float32) / 255.0


def solid(shape, polys, trab: float, cort: float, rim_w: float, tex: np.ndarray | None = None):
    """Bone-like density of a shape: trabecular fill (optionally textured) plus a cortical rim."""
    r = raster(shape, polys)
    if r is None:
        return None
    sl, cov = r
    dist = cv2.distanceTransform((cov > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    fill = trab if tex is None else trab * (1.0 + 0.35 * tex[sl])
    return sl, cov * (fill + cort * np.exp(-dist / rim_w)), cov


class BoxAcc:
    """Union of pixel masks -> one (xmin, ymin, xmax, ymax) box."""

    def __init__(self) -> None:
        self.box: list[int] | None = None

    def add(self, sl: tuple[slice, slice], mask: np.ndarray) -> None:
        ys = np.flatnonzero(mask.any(axis=1))
        xs = np.flatnonzero(mask.any(axis=0))
        if ys.size == 0:
            return
        b = [sl[1].start + xs[0], sl[0].start + ys[0], sl[1].start + xs[-1] + 1, sl[0].start + ys[-1] + 1]
        if self.box is None:
            self.box = b
        else:
            self.box = [min(self.box[0], b[0]), min(self.box[1], b[1]),
                        max(self.box[2], b[2]), max(self.box[3], b[3])]


# --------------------------------------------------------------------------- anatomy
@dataclass(frozen=True)
class Vert:
    """One vertebra in its local frame: u across (posterior = +u on lateral), v down the column."""

    cx: float
    cy: float
    a: float  # half width of the body
    h: float  # original half height of the body
    alpha: float  # tilt of the local v axis
    top_l: float  # endplate v offsets at u = -a / +a
    top_r: float
    bot_l: float
    bot_r: float
    conc: float  # endplate concavity (px)
    waist: float  # side-wall concavity (px)
    dx: float = 0.0  # body shift (listhesis)
    post_dx: float = 0.0  # posterior-element shift
    dens: float = 1.0
    scl_top: float = 0.0  # endplate sclerosis strength
    scl_bot: float = 0.0

    def to_img(self, uv: np.ndarray, shift: float = 0.0) -> np.ndarray:
        c, s = math.cos(self.alpha), math.sin(self.alpha)
        u, v = uv[:, 0], uv[:, 1]
        return np.stack([self.cx + shift + u * c + v * s, self.cy - u * s + v * c], axis=1)

    def to_local(self, x: np.ndarray, y: np.ndarray, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
        c, s = math.cos(self.alpha), math.sin(self.alpha)
        dx, dy = x - self.cx - shift, y - self.cy
        return dx * c - dy * s, dx * s + dy * c

    def body_local(self) -> np.ndarray:
        a = self.a
        uu = np.linspace(-a, a, 9)
        t = (uu + a) / (2 * a)
        par = 1.0 - (uu / a) ** 2
        top = self.top_l + (self.top_r - self.top_l) * t + self.conc * par
        bot = self.bot_l + (self.bot_r - self.bot_l) * t - self.conc * par
        # side-wall samples sit at fixed heights so that moving one endplate changes pixels only near it
        r_v = self._side_samples(top[-1], bot[-1])
        l_v = self._side_samples(top[0], bot[0])[::-1]
        u = np.concatenate([uu, a - self._bulge(r_v), uu[::-1], -a + self._bulge(l_v)])
        v = np.concatenate([top, r_v, bot[::-1], l_v])
        return chaikin(np.stack([u, v], axis=1), 2)

    def _side_samples(self, top: float, bot: float) -> np.ndarray:
        m = 0.15 * self.h
        grid = np.linspace(-self.h, self.h, 7)[1:-1]
        grid = grid[(grid > top + 1.5 * m) & (grid < bot - 1.5 * m)]
        return np.concatenate([[top + m], grid, [bot - m]])

    def _bulge(self, v: np.ndarray) -> np.ndarray:
        t = np.clip((v + self.h) / (2 * self.h), 0.0, 1.0)
        return self.waist * np.sin(np.pi * t)

    def corner(self, side: int, end: str) -> tuple[float, float]:
        """Local (u, v) of a body corner: side -1/+1, end 'top'/'bot'."""
        if end == "top":
            return side * self.a, (self.top_l if side < 0 else self.top_r)
        return side * self.a, (self.bot_l if side < 0 else self.bot_r)


@dataclass
class Scene:
    shape: tuple[int, int]
    view: str
    verts: list[Vert]
    gaps: list[float]  # original disc gap below vertebra i (px)
    rim_w: float
    soft: np.ndarray
    tex: np.ndarray
    noise: np.ndarray
    k: float
    lo: float
    hi: float
    gamma: float
    heel: float
    blur: float
    sigma_g: float
    sigma_q: float
    flip: bool


def _soft_tissue(rng: np.random.Generator, h: int, w: int, view: str) -> np.ndarray:
    """Body thickness profile with a vertical gradient and a few bowel-gas lucencies."""
    x = np.arange(w, dtype=np.float32)
    y = np.arange(h, dtype=np.float32)
    centre = w * (rng.uniform(0.45, 0.55) if view == "AP" else rng.uniform(0.35, 0.5))
    radius = w * rng.uniform(0.5, 0.75)
    prof = np.sqrt(np.clip(1.0 - ((x - centre) / radius) ** 2, 0.0, 1.0))
    grad = 1.0 + rng.uniform(-0.1, 0.25) * (y / h - 0.5)
    soft = (rng.uniform(0.35, 0.55) * grad[:, None] * prof[None, :]).astype(np.float32)
    for _ in range(int(rng.integers(2, 8))):  # bowel gas
        cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.2, 0.95) * h
        rx, ry = rng.uniform(0.03, 0.09) * h, rng.uniform(0.02, 0.06) * h
        x0, x1 = max(int(cx - 3 * rx), 0), min(int(cx + 3 * rx) + 1, w)
        y0, y1 = max(int(cy - 3 * ry), 0), min(int(cy + 3 * ry) + 1, h)
        if x1 <= x0 or y1 <= y0:
            continue
        g = np.exp(-0.5 * (((x[x0:x1] - cx) / rx) ** 2)[None, :] - 0.5 * (((y[y0:y1] - cy) / ry) ** 2)[:, None])
        soft[y0:y1, x0:x1] *= 1.0 - rng.uniform(0.25, 0.5) * g
    return soft


def _band_noise(rng: np.random.Generator, h: int, w: int, scale: float) -> np.ndarray:
    """Zero-mean unit-std band-pass noise (trabecular texture)."""
    n = rng.standard_normal((h, w), dtype=np.float32)
    fine = cv2.GaussianBlur(n, (0, 0), 0.8 * scale)
    coarse = cv2.GaussianBlur(n, (0, 0), 2.5 * scale)
    t = fine - coarse
    return t / (float(t.std()) + 1e-6)


def _column(rng: np.random.Generator, h: int, w: int, view: str) -> tuple[list[Vert], list[float]]:
    n = int(rng.integers(5, 8))
    y0, y1 = h * rng.uniform(0.04, 0.1), h * (1.0 - rng.uniform(0.04, 0.1))
    disc = rng.uniform(0.26, 0.36)
    growth = rng.uniform(0.0, 0.15)
    rel = 1.0 + growth * (np.arange(n) / max(n - 1, 1) - 0.5)  # bodies grow caudally
    unit = (y1 - y0) / (rel.sum() + disc * rel[:-1].sum())
    heights, gaps = rel * unit, disc * rel[:-1] * unit
    cx0 = w * (rng.uniform(0.46, 0.54) if view == "AP" else rng.uniform(0.33, 0.42))
    amp = w * rng.uniform(0.0, 0.04) * (1.0 if view == "AP" else 1.6)
    freq, phase = rng.uniform(0.3, 0.9), rng.uniform(0, 2 * np.pi)
    tilt = rng.uniform(-0.04, 0.04)
    width_ratio = rng.uniform(1.35, 1.7) if view == "AP" else rng.uniform(1.1, 1.35)

    def centre_x(yy: float) -> float:
        return cx0 + amp * math.sin(2 * math.pi * freq * yy / h + phase) + tilt * (yy - h / 2)

    def slope(yy: float) -> float:
        return amp * 2 * math.pi * freq / h * math.cos(2 * math.pi * freq * yy / h + phase) + tilt

    verts, y = [], y0
    for i in range(n):
        hh = heights[i] / 2
        cy = y + hh
        a = hh * width_ratio * rng.uniform(0.95, 1.05)
        verts.append(Vert(
            cx=centre_x(cy), cy=cy, a=a, h=hh, alpha=math.atan(slope(cy)),
            top_l=-hh, top_r=-hh, bot_l=hh, bot_r=hh,
            conc=hh * rng.uniform(0.03, 0.1), waist=a * rng.uniform(0.02, 0.07)))
        y += heights[i] + (gaps[i] if i < n - 1 else 0.0)
    return verts, [float(g) for g in gaps]


def base_scene(rng: np.random.Generator, height: int, width: int | None, view: str | None) -> Scene:
    view = view if view is not None else str(rng.choice(VIEWS))
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    ratio = rng.uniform(0.72, 0.85)
    w = int(width) if width is not None else max(32, int(round(height * ratio)))
    h = int(height)
    verts, gaps = _column(rng, h, w, view)
    scale = h / 512.0
    return Scene(
        shape=(h, w), view=view, verts=verts, gaps=gaps,
        rim_w=max(0.8, 0.045 * verts[0].h),
        soft=_soft_tissue(rng, h, w, view),
        tex=_band_noise(rng, h, w, max(scale, 0.5)),
        noise=rng.standard_normal((h, w), dtype=np.float32),
        k=rng.uniform(1.0, 1.4), lo=rng.uniform(0.05, 0.22), hi=rng.uniform(0.85, 1.0),
        gamma=rng.uniform(0.75, 1.35), heel=rng.uniform(-0.15, 0.15),
        blur=rng.uniform(0.5, 1.0) * max(scale, 0.5),
        sigma_g=rng.uniform(0.004, 0.012), sigma_q=rng.uniform(0.01, 0.035),
        flip=bool(rng.random() < 0.5),
    )


# --------------------------------------------------------------------------- rendering of bone
_TRAB, _CORT = 0.45, 0.5


def _draw_body(sc: Scene, v: Vert, canvas: np.ndarray) -> None:
    r = solid(sc.shape, [(v.to_img(v.body_local(), v.dx), 1.0)], _TRAB * v.dens, _CORT, sc.rim_w, sc.tex)
    if r is None:
        return
    sl, dens, cov = r
    if v.scl_top or v.scl_bot:  # sclerotic band along the endplates of a narrowed disc
        yy, xx = np.mgrid[sl[0], sl[1]].astype(np.float32)
        u, vv = v.to_local(xx, yy, v.dx)
        t = np.clip((u + v.a) / (2 * v.a), 0.0, 1.0)
        width = 2.5 * sc.rim_w
        if v.scl_bot:
            edge = v.bot_l + (v.bot_r - v.bot_l) * t
            dens += v.scl_bot * cov * np.exp(-np.clip(edge - vv, 0.0, None) / width)
        if v.scl_top:
            edge = v.top_l + (v.top_r - v.top_l) * t
            dens += v.scl_top * cov * np.exp(-np.clip(vv - edge, 0.0, None) / width)
    canvas[sl] += dens


def _posterior_polys(v: Vert, view: str) -> list[tuple[list[tuple[np.ndarray, float]], float, float]]:
    """Posterior elements as (polygons, trabecular, cortical) in image coords."""
    a, h, p = v.a, v.h, v.post_dx
    out = []
    if view == "AP":
        for s in (-1, 1):
            outer = v.to_img(ellipse(s * 0.6 * a, -0.35 * h, 0.17 * a, 0.28 * h), p)
            inner = v.to_img(ellipse(s * 0.6 * a, -0.35 * h, 0.08 * a, 0.16 * h), p)
            out.append(([(outer, 1.0), (inner, 0.0)], 0.25, 0.25))  # pedicle ring
            tp = np.array([[s * 0.85 * a, -0.5 * h], [s * 1.55 * a, -0.6 * h], [s * 1.65 * a, -0.3 * h],
                           [s * 0.85 * a, -0.1 * h]])
            out.append(([(v.to_img(chaikin(tp, 2), p), 1.0)], 0.2, 0.15))  # transverse process
        out.append(([(v.to_img(ellipse(0.0, 0.45 * h, 0.09 * a, 0.38 * h), p), 1.0)], 0.2, 0.25))
    else:
        ped = np.array([[0.9 * a, -0.8 * h], [1.55 * a, -0.7 * h], [1.55 * a, -0.15 * h], [0.9 * a, -0.2 * h]])
        out.append(([(v.to_img(chaikin(ped, 2), p), 1.0)], 0.28, 0.25))
        out.append(([(v.to_img(ellipse(1.72 * a, 0.05 * h, 0.2 * a, 0.95 * h), p), 1.0)], 0.22, 0.28))
        sp = np.array([[1.75 * a, -0.4 * h], [3.0 * a, -0.05 * h], [3.15 * a, 0.4 * h], [1.8 * a, 0.55 * h]])
        out.append(([(v.to_img(chaikin(sp, 2), p), 1.0)], 0.22, 0.25))
    return out


def draw_vertebra(sc: Scene, v: Vert, canvas: np.ndarray) -> None:
    _draw_body(sc, v, canvas)
    for polys, trab, cort in _posterior_polys(v, sc.view):
        r = solid(sc.shape, polys, trab, cort, sc.rim_w)
        if r is not None:
            canvas[r[0]] += r[1]
