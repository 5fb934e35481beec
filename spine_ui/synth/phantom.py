"""Synthetic spine radiograph phantom with lesions drawn at known boxes.

A plausible-looking (not anatomically exact) AP or lateral lumbar radiograph: soft-tissue thickness
profile with bowel gas, a gently curved column of 5-7 vertebral bodies (cortical rim, trabecular texture,
concave endplates), dark disc spaces, posterior elements (pedicle rings and processes on AP; pedicles,
articular pillars, spinous processes and foramina on lateral), then exposure, gamma, blur and
signal-dependent noise.

Randomness is split in two streams drawn from the caller's generator: one for the anatomy and the
acquisition, one for the lesions. The same seed therefore gives the same patient with or without
lesions, and the pixel difference sits inside the returned boxes (plus ~2 px of blur).

Lesion boxes are the bounding boxes of the drawn feature masks (for geometric lesions: the pixels whose
bone density changed), as ``(xmin, ymin, xmax, ymax)`` floats in output pixels, ``xmax``/``ymax``
exclusive.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np

from spine_ui.config import LESION_CLASSES

Box = tuple[float, float, float, float]
VIEWS: tuple[str, ...] = ("AP", "lateral")

_SUB = 4  # sub-pixel bits for cv2.fillPoly
_GEOMETRIC = ("Disc space narrowing", "Vertebral collapse", "Spondylolysthesis")
_METAL = 3.5  # attenuation of implant metal (saturates)


# --------------------------------------------------------------------------- drawing primitives
def _chaikin(p: np.ndarray, n: int = 2) -> np.ndarray:
    """Corner-cutting smoothing of a closed polygon."""
    for _ in range(n):
        q = np.roll(p, -1, axis=0)
        p = np.stack([0.75 * p + 0.25 * q, 0.25 * p + 0.75 * q], axis=1).reshape(-1, 2)
    return p


def _ellipse(uc: float, vc: float, au: float, av: float, n: int = 36) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([uc + au * np.cos(t), vc + av * np.sin(t)], axis=1)


def _raster(shape: tuple[int, int], polys: Sequence[tuple[np.ndarray, float]], pad: int = 2):
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
        q = np.round((poly - (x0, y0)) * (1 << _SUB)).astype(np.int32)
        cv2.fillPoly(crop, [q], int(round(255 * val)), cv2.LINE_AA, shift=_SUB)
    return (slice(y0, y1), slice(x0, x1)), crop.astype(np.float32) / 255.0


def _solid(shape, polys, trab: float, cort: float, rim_w: float, tex: np.ndarray | None = None):
    """Bone-like density of a shape: trabecular fill (optionally textured) plus a cortical rim."""
    r = _raster(shape, polys)
    if r is None:
        return None
    sl, cov = r
    dist = cv2.distanceTransform((cov > 0.5).astype(np.uint8), cv2.DIST_L2, 3)
    fill = trab if tex is None else trab * (1.0 + 0.35 * tex[sl])
    return sl, cov * (fill + cort * np.exp(-dist / rim_w)), cov


class _BoxAcc:
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
class _Vert:
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
        return _chaikin(np.stack([u, v], axis=1), 2)

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
class _Scene:
    shape: tuple[int, int]
    view: str
    verts: list[_Vert]
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


def _column(rng: np.random.Generator, h: int, w: int, view: str) -> tuple[list[_Vert], list[float]]:
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
        verts.append(_Vert(
            cx=centre_x(cy), cy=cy, a=a, h=hh, alpha=math.atan(slope(cy)),
            top_l=-hh, top_r=-hh, bot_l=hh, bot_r=hh,
            conc=hh * rng.uniform(0.03, 0.1), waist=a * rng.uniform(0.02, 0.07)))
        y += heights[i] + (gaps[i] if i < n - 1 else 0.0)
    return verts, [float(g) for g in gaps]


def _base_scene(rng: np.random.Generator, height: int, width: int | None, view: str | None) -> _Scene:
    view = view if view is not None else str(rng.choice(VIEWS))
    if view not in VIEWS:
        raise ValueError(f"view must be one of {VIEWS}, got {view!r}")
    ratio = rng.uniform(0.72, 0.85)
    w = int(width) if width is not None else max(32, int(round(height * ratio)))
    h = int(height)
    verts, gaps = _column(rng, h, w, view)
    scale = h / 512.0
    return _Scene(
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


def _draw_body(sc: _Scene, v: _Vert, canvas: np.ndarray) -> None:
    r = _solid(sc.shape, [(v.to_img(v.body_local(), v.dx), 1.0)], _TRAB * v.dens, _CORT, sc.rim_w, sc.tex)
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


def _posterior_polys(v: _Vert, view: str) -> list[tuple[list[tuple[np.ndarray, float]], float, float]]:
    """Posterior elements as (polygons, trabecular, cortical) in image coords."""
    a, h, p = v.a, v.h, v.post_dx
    out = []
    if view == "AP":
        for s in (-1, 1):
            outer = v.to_img(_ellipse(s * 0.6 * a, -0.35 * h, 0.17 * a, 0.28 * h), p)
            inner = v.to_img(_ellipse(s * 0.6 * a, -0.35 * h, 0.08 * a, 0.16 * h), p)
            out.append(([(outer, 1.0), (inner, 0.0)], 0.25, 0.25))  # pedicle ring
            tp = np.array([[s * 0.85 * a, -0.5 * h], [s * 1.55 * a, -0.6 * h], [s * 1.65 * a, -0.3 * h],
                           [s * 0.85 * a, -0.1 * h]])
            out.append(([(v.to_img(_chaikin(tp, 2), p), 1.0)], 0.2, 0.15))  # transverse process
        out.append(([(v.to_img(_ellipse(0.0, 0.45 * h, 0.09 * a, 0.38 * h), p), 1.0)], 0.2, 0.25))
    else:
        ped = np.array([[0.9 * a, -0.8 * h], [1.55 * a, -0.7 * h], [1.55 * a, -0.15 * h], [0.9 * a, -0.2 * h]])
        out.append(([(v.to_img(_chaikin(ped, 2), p), 1.0)], 0.28, 0.25))
        out.append(([(v.to_img(_ellipse(1.72 * a, 0.05 * h, 0.2 * a, 0.95 * h), p), 1.0)], 0.22, 0.28))
        sp = np.array([[1.75 * a, -0.4 * h], [3.0 * a, -0.05 * h], [3.15 * a, 0.4 * h], [1.8 * a, 0.55 * h]])
        out.append(([(v.to_img(_chaikin(sp, 2), p), 1.0)], 0.22, 0.25))
    return out


def _draw_vertebra(sc: _Scene, v: _Vert, canvas: np.ndarray) -> None:
    _draw_body(sc, v, canvas)
    for polys, trab, cort in _posterior_polys(v, sc.view):
        r = _solid(sc.shape, polys, trab, cort, sc.rim_w)
        if r is not None:
            canvas[r[0]] += r[1]


# --------------------------------------------------------------------------- lesions
def _check_lesions(lesions: Sequence[str]) -> list[str]:
    out = []
    for lab in lesions:
        if lab not in LESION_CLASSES:
            raise ValueError(f"unknown lesion type {lab!r}; valid: {', '.join(LESION_CLASSES)}")
        out.append(lab)
    return out


Rng = np.random.Generator


def _pick(rng: Rng, options: list[int], claimed: set[int], need: Callable[[int], Iterable[int]]) -> int:
    """Prefer an option whose vertebrae are unclaimed; fall back to any option."""
    free = [o for o in options if not (set(need(o)) & claimed)]
    pool = free or options
    return pool[int(rng.integers(len(pool)))]


def _choose(rng: Rng, options: list[int]) -> int:
    if not options:
        raise ValueError("too many geometric lesions for this column")
    return options[int(rng.integers(len(options)))]


def _narrow_disc(rng: Rng, sc: _Scene, verts: list[_Vert], j: int) -> None:
    """Endplates of vertebrae j and j+1 grow into the disc (18-32 % of the gap left), with sclerosis."""
    grow = (1.0 - rng.uniform(0.18, 0.32)) * sc.gaps[j] / 2
    scl = rng.uniform(0.25, 0.45)
    up, lo = verts[j], verts[j + 1]
    verts[j] = replace(up, bot_l=up.bot_l + grow, bot_r=up.bot_r + grow, scl_bot=scl)
    verts[j + 1] = replace(lo, top_l=lo.top_l - grow, top_r=lo.top_r - grow, scl_top=scl)


def _collapse(rng: Rng, sc: _Scene, v: _Vert) -> _Vert:
    """Flattened, denser body (anterior wedge on lateral); the lower endplate stays in place."""
    f = rng.uniform(0.45, 0.62)
    if sc.view == "lateral":
        f_l, f_r = f, min(0.95, f + rng.uniform(0.15, 0.35))
    else:
        f_l, f_r = f, f + rng.uniform(-0.05, 0.05)
        if rng.random() < 0.5:
            f_l, f_r = f_r, f_l
    return replace(v, top_l=v.bot_l - 2 * v.h * f_l, top_r=v.bot_r - 2 * v.h * f_r,
                   dens=v.dens * 1.3, conc=v.conc * 0.3)


def _slip(rng: Rng, sc: _Scene, v: _Vert) -> _Vert:
    """Body shifted by 20-32 % of its width: anterolisthesis with the arch left behind (pars defect)
    on lateral, a lateral shift of the whole vertebra on AP."""
    slip = rng.uniform(0.2, 0.32) * 2 * v.a
    if sc.view == "lateral":
        return replace(v, dx=-slip)
    sgn = 1.0 if rng.random() < 0.5 else -1.0
    return replace(v, dx=sgn * slip, post_dx=sgn * slip)


def _plan_geometry(rng: Rng, sc: _Scene, lesions: list[str]
                   ) -> tuple[list[_Vert], list[tuple[str, list[int]]], set[int]]:
    """Apply listhesis, disc narrowing and collapse on exclusive vertebrae (most constrained first)."""
    verts = list(sc.verts)
    n = len(verts)
    claimed: set[int] = set()
    done: list[tuple[str, list[int]]] = []
    order = ("Spondylolysthesis", "Disc space narrowing", "Vertebral collapse")
    for lab in sorted((x for x in lesions if x in _GEOMETRIC), key=order.index):
        if lab == "Disc space narrowing":
            j = _choose(rng, [i for i in range(n - 1) if not {i, i + 1} & claimed])
            _narrow_disc(rng, sc, verts, j)
            idx = [j, j + 1]
        elif lab == "Vertebral collapse":
            j = _choose(rng, [i for i in range(n) if i not in claimed])
            verts[j] = _collapse(rng, sc, verts[j])
            idx = [j]
        else:
            j = _choose(rng, [i for i in range(1, n - 1) if i not in claimed])
            verts[j] = _slip(rng, sc, verts[j])
            idx = [j]
        claimed.update(idx)
        done.append((lab, idx))
    return verts, done, claimed


def _geometric_box(sc: _Scene, old: list[_Vert], new: list[_Vert], idx: list[int]) -> _BoxAcc:
    acc = _BoxAcc()
    for j in idx:
        a = np.zeros(sc.shape, np.float32)
        b = np.zeros(sc.shape, np.float32)
        _draw_vertebra(sc, old[j], a)
        _draw_vertebra(sc, new[j], b)
        acc.add((slice(0, sc.shape[0]), slice(0, sc.shape[1])), np.abs(a - b) > 0.03)
    return acc


def _osteophytes(rng: Rng, sc: _Scene, verts: list[_Vert], j: int, bone: np.ndarray) -> _BoxAcc:
    up, lo = verts[j], verts[j + 1]
    side = (1 if rng.random() < 0.5 else -1) if sc.view == "AP" else (-1 if rng.random() < 0.8 else 1)
    which = [("up", "bot"), ("lo", "top")]
    if rng.random() < 0.35:
        which = [which[int(rng.integers(2))]]
    acc = _BoxAcc()
    for name, end in which:
        v = up if name == "up" else lo
        u0, v0 = v.corner(side, end)
        sgn = 1.0 if end == "bot" else -1.0  # spur grows towards the disc
        length = rng.uniform(0.3, 0.5) * v.a
        reach = rng.uniform(0.3, 0.5) * sc.gaps[j] + 0.1 * v.h
        pts = np.array([[u0 - side * 0.03 * v.a, v0 - sgn * 0.45 * v.h],
                        [u0 + side * 0.6 * length, v0 - sgn * 0.05 * v.h],
                        [u0 + side * length, v0 + sgn * reach],
                        [u0 - side * 0.25 * v.a, v0]])
        r = _solid(sc.shape, [(v.to_img(_chaikin(pts, 1), v.dx), 1.0)], 0.4, 0.45, sc.rim_w)
        if r is not None:
            bone[r[0]] += r[1]
            acc.add(r[0], r[2] > 0.25)
    return acc


def _foraminal(rng: Rng, sc: _Scene, verts: list[_Vert], j: int, bone: np.ndarray) -> _BoxAcc:
    v, g = verts[j], sc.gaps[j]
    orig = sc.verts[j]
    h, a = orig.h, orig.a
    if sc.view == "lateral":  # facet hypertrophy + disc bulge encroaching the foramen behind the disc
        vc = (-0.15 * h + 1.2 * h + g) / 2
        half = (1.35 * h + g) / 2
        shapes = [_ellipse(rng.uniform(1.35, 1.5) * a, vc + rng.uniform(-0.1, 0.1) * half,
                           rng.uniform(0.2, 0.28) * a, rng.uniform(0.35, 0.5) * half),
                  _ellipse(1.02 * a, h + g / 2, rng.uniform(0.18, 0.26) * a, 0.3 * g + 0.2 * h)]
    else:  # bright encroachment over the facet column at the disc level
        s = 1 if rng.random() < 0.5 else -1
        shapes = [_ellipse(s * rng.uniform(0.5, 0.65) * a, h + g / 2, rng.uniform(0.18, 0.26) * a,
                           0.5 * g + rng.uniform(0.25, 0.4) * h)]
    acc = _BoxAcc()
    for shp in shapes:
        r = _solid(sc.shape, [(v.to_img(shp, v.post_dx), 1.0)], 0.45, 0.4, sc.rim_w)
        if r is not None:
            bone[r[0]] += r[1]
            acc.add(r[0], r[2] > 0.25)
    return acc


def _segment(p0: np.ndarray, p1: np.ndarray, r: float) -> np.ndarray:
    d = p1 - p0
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * r
    return np.array([p0 + nrm, p1 + nrm, p1 - nrm, p0 - nrm])


def _implant(rng: Rng, sc: _Scene, verts: list[_Vert], k: int, m: int, metal: np.ndarray) -> _BoxAcc:
    """Pedicle screws on m consecutive vertebrae joined by rods (AP: two columns; lateral: one)."""
    sides = (-1, 1) if sc.view == "AP" else (1,)
    polys: list[np.ndarray] = []
    for s in sides:
        heads = []
        for v in verts[k:k + m]:
            a, h = v.a, v.h
            if sc.view == "AP":
                head, tip = np.array([[s * 0.95 * a, -0.35 * h]]), np.array([[s * 0.2 * a, -0.22 * h]])
            else:
                head, tip = np.array([[1.45 * a, -0.45 * h]]), np.array([[-0.5 * a, -0.3 * h]])
            head, tip = v.to_img(head, v.post_dx)[0], v.to_img(tip, v.dx)[0]
            polys.append(_segment(head, tip, 0.07 * a))
            polys.append(_ellipse(head[0], head[1], 0.13 * a, 0.13 * a, 24))
            heads.append(head)
        ext = rng.uniform(0.1, 0.3) * verts[k].h
        ends = [heads[0] + (0, -ext)] + heads + [heads[-1] + (0, ext)]
        for p0, p1 in zip(ends[:-1], ends[1:]):
            polys.append(_segment(np.asarray(p0), np.asarray(p1), 0.055 * verts[k].a))
    acc = _BoxAcc()
    for poly in polys:
        r = _raster(sc.shape, [(poly, 1.0)])
        if r is not None:
            metal[r[0]] = np.maximum(metal[r[0]], _METAL * r[1])
            acc.add(r[0], r[1] > 0.25)
    return acc


def _other(rng: Rng, sc: _Scene, v: _Vert, bone: np.ndarray) -> _BoxAcc:
    """Lytic (dark) or sclerotic (bright) focal lesion inside a vertebral body."""
    h, w = sc.shape
    m = min(v.a, v.h)
    uc, vc = rng.uniform(-0.35, 0.35) * v.a, rng.uniform(-0.3, 0.3) * v.h
    ru, rv = rng.uniform(0.3, 0.45) * m, rng.uniform(0.3, 0.45) * m
    cx, cy = v.to_img(np.array([[uc, vc]]), v.dx)[0]
    rr = max(ru, rv) * 1.2
    x0, x1 = max(int(cx - rr), 0), min(int(math.ceil(cx + rr)) + 1, w)
    y0, y1 = max(int(cy - rr), 0), min(int(math.ceil(cy + rr)) + 1, h)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    u, vv = v.to_local(xx, yy, v.dx)
    q = ((u - uc) / ru) ** 2 + ((vv - vc) / rv) ** 2
    wgt = np.clip((1.0 - q) * 3.0, 0.0, 1.0)
    sl = (slice(y0, y1), slice(x0, x1))
    if rng.random() < 0.5:
        bone[sl] *= 1.0 - rng.uniform(0.65, 0.8) * wgt
    else:
        bone[sl] += rng.uniform(0.55, 0.8) * wgt
    acc = _BoxAcc()
    acc.add(sl, wgt > 0.1)
    return acc


def _overlay(rng: Rng, sc: _Scene, verts: list[_Vert], lesions: list[str], claimed: set[int],
             bone: np.ndarray, metal: np.ndarray) -> list[tuple[str, _BoxAcc]]:
    n = len(verts)
    out = []
    order = [x for x in LESION_CLASSES if x not in _GEOMETRIC and x != "Other lesions"] + ["Other lesions"]
    for lab in sorted((x for x in lesions if x not in _GEOMETRIC), key=order.index):
        if lab == "Osteophytes":
            j = _pick(rng, list(range(n - 1)), claimed, lambda o: (o, o + 1))
            acc = _osteophytes(rng, sc, verts, j, bone)
            claimed.update((j, j + 1))
        elif lab == "Foraminal stenosis":
            j = _pick(rng, list(range(n - 1)), claimed, lambda o: (o, o + 1))
            acc = _foraminal(rng, sc, verts, j, bone)
            claimed.update((j, j + 1))
        elif lab == "Surgical implant":
            m = min(int(rng.integers(2, 4)), n)
            k = _pick(rng, list(range(n - m + 1)), claimed, lambda o: range(o, o + m))
            acc = _implant(rng, sc, verts, k, m, metal)
        else:
            j = _pick(rng, list(range(n)), claimed, lambda o: (o,))
            acc = _other(rng, sc, verts[j], bone)
            claimed.add(j)
        out.append((lab, acc))
    return out


# --------------------------------------------------------------------------- public API
def _expose(sc: _Scene, density: np.ndarray) -> np.ndarray:
    h = sc.shape[0]
    heel = 1.0 + sc.heel * (np.arange(h, dtype=np.float32) / h - 0.5)
    img = 1.0 - np.exp(-sc.k * density * heel[:, None])
    img = np.clip((img - sc.lo) / (sc.hi - sc.lo), 0.0, 1.0) ** sc.gamma
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), sc.blur)
    img += (sc.sigma_g + sc.sigma_q * np.sqrt(np.clip(img, 0.0, 1.0))) * sc.noise
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def render_spine(rng: np.random.Generator, lesions: Sequence[str] = (), *, height: int = 512,
                 width: int | None = None, view: str | None = None
                 ) -> tuple[np.ndarray, list[tuple[str, Box]]]:
    """Render one phantom radiograph.

    ``lesions``: keys of ``config.LESION_CLASSES`` (one drawn instance each; repeats allowed).
    ``view``: "AP" or "lateral"; ``None`` picks one at random. ``width``: ``None`` gives a portrait
    aspect of 0.72-0.85. Returns ``(image float32 H x W in [0, 1] bone bright, [(label, box), ...])``.
    """
    lesions = _check_lesions(lesions)
    base_rng = np.random.default_rng(int(rng.integers(2**63)))
    lesion_rng = np.random.default_rng(int(rng.integers(2**63)))
    sc = _base_scene(base_rng, height, width, view)
    verts, geo, claimed = _plan_geometry(lesion_rng, sc, lesions)
    bone = np.zeros(sc.shape, np.float32)
    metal = np.zeros(sc.shape, np.float32)
    for v in verts:
        _draw_vertebra(sc, v, bone)
    found = [(lab, _geometric_box(sc, sc.verts, verts, idx)) for lab, idx in geo]
    found += _overlay(lesion_rng, sc, verts, lesions, claimed, bone, metal)
    img = _expose(sc, sc.soft + bone + metal)
    w = sc.shape[1]
    boxes: list[tuple[str, Box]] = []
    for lab, acc in found:
        if acc.box is None:
            continue
        x0, y0, x1, y1 = acc.box
        if sc.flip:
            x0, x1 = w - x1, w - x0
        boxes.append((lab, (float(x0), float(y0), float(x1), float(y1))))
    if sc.flip:
        img = np.ascontiguousarray(img[:, ::-1])
    return img, boxes


def to_stored(img: np.ndarray, bits_stored: int = 12, monochrome1: bool = False) -> np.ndarray:
    """[0, 1] bone-bright image -> uint16 stored values of ``bits_stored`` bits (inverted for MONOCHROME1)."""
    if not 1 <= bits_stored <= 16:
        raise ValueError("bits_stored must be in 1..16")
    top = (1 << bits_stored) - 1
    v = np.rint(np.clip(np.asarray(img, np.float64), 0.0, 1.0) * top).astype(np.uint16)
    return (top - v).astype(np.uint16) if monochrome1 else v
