"""Phantom lesions: the seven VinDr-SpineXR lesion types drawn into the anatomy, each with its box."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Callable, Iterable, Sequence

import numpy as np

from spine_ui.config import LESION_CLASSES

from spine_ui.synth.anatomy import (GEOMETRIC, METAL, BoxAcc, Scene, Vert, chaikin, draw_vertebra, ellipse, raster, solid)



# --------------------------------------------------------------------------- lesions
def check_lesions(lesions: Sequence[str]) -> list[str]:
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


def _narrow_disc(rng: Rng, sc: Scene, verts: list[Vert], j: int) -> None:
    """Endplates of vertebrae j and j+1 grow into the disc (18-32 % of the gap left), with sclerosis."""
    grow = (1.0 - rng.uniform(0.18, 0.32)) * sc.gaps[j] / 2
    scl = rng.uniform(0.25, 0.45)
    up, lo = verts[j], verts[j + 1]
    verts[j] = replace(up, bot_l=up.bot_l + grow, bot_r=up.bot_r + grow, scl_bot=scl)
    verts[j + 1] = replace(lo, top_l=lo.top_l - grow, top_r=lo.top_r - grow, scl_top=scl)


def _collapse(rng: Rng, sc: Scene, v: Vert) -> Vert:
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


def _slip(rng: Rng, sc: Scene, v: Vert) -> Vert:
    """Body shifted by 20-32 % of its width: anterolisthesis with the arch left behind (pars defect)
    on lateral, a lateral shift of the whole vertebra on AP."""
    slip = rng.uniform(0.2, 0.32) * 2 * v.a
    if sc.view == "lateral":
        return replace(v, dx=-slip)
    sgn = 1.0 if rng.random() < 0.5 else -1.0
    return replace(v, dx=sgn * slip, post_dx=sgn * slip)


def plan_geometry(rng: Rng, sc: Scene, lesions: list[str]
                   ) -> tuple[list[Vert], list[tuple[str, list[int]]], set[int]]:
    """Apply listhesis, disc narrowing and collapse on exclusive vertebrae (most constrained first)."""
    verts = list(sc.verts)
    n = len(verts)
    claimed: set[int] = set()
    done: list[tuple[str, list[int]]] = []
    order = ("Spondylolysthesis", "Disc space narrowing", "Vertebral collapse")
    for lab in sorted((x for x in lesions if x in GEOMETRIC), key=order.index):
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


def geometric_box(sc: Scene, old: list[Vert], new: list[Vert], idx: list[int]) -> BoxAcc:
    acc = BoxAcc()
    for j in idx:
        a = np.zeros(sc.shape, np.float32)
        b = np.zeros(sc.shape, np.float32)
        draw_vertebra(sc, old[j], a)
        draw_vertebra(sc, new[j], b)
        acc.add((slice(0, sc.shape[0]), slice(0, sc.shape[1])), np.abs(a - b) > 0.03)
    return acc


def _osteophytes(rng: Rng, sc: Scene, verts: list[Vert], j: int, bone: np.ndarray) -> BoxAcc:
    up, lo = verts[j], verts[j + 1]
    side = (1 if rng.random() < 0.5 else -1) if sc.view == "AP" else (-1 if rng.random() < 0.8 else 1)
    which = [("up", "bot"), ("lo", "top")]
    if rng.random() < 0.35:
        which = [which[int(rng.integers(2))]]
    acc = BoxAcc()
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
        r = solid(sc.shape, [(v.to_img(chaikin(pts, 1), v.dx), 1.0)], 0.4, 0.45, sc.rim_w)
        if r is not None:
            bone[r[0]] += r[1]
            acc.add(r[0], r[2] > 0.25)
    return acc


def _foraminal(rng: Rng, sc: Scene, verts: list[Vert], j: int, bone: np.ndarray) -> BoxAcc:
    v, g = verts[j], sc.gaps[j]
    orig = sc.verts[j]
    h, a = orig.h, orig.a
    if sc.view == "lateral":  # facet hypertrophy + disc bulge encroaching the foramen behind the disc
        vc = (-0.15 * h + 1.2 * h + g) / 2
        half = (1.35 * h + g) / 2
        shapes = [ellipse(rng.uniform(1.35, 1.5) * a, vc + rng.uniform(-0.1, 0.1) * half,
                           rng.uniform(0.2, 0.28) * a, rng.uniform(0.35, 0.5) * half),
                  ellipse(1.02 * a, h + g / 2, rng.uniform(0.18, 0.26) * a, 0.3 * g + 0.2 * h)]
    else:  # bright encroachment over the facet column at the disc level
        s = 1 if rng.random() < 0.5 else -1
        shapes = [ellipse(s * rng.uniform(0.5, 0.65) * a, h + g / 2, rng.uniform(0.18, 0.26) * a,
                           0.5 * g + rng.uniform(0.25, 0.4) * h)]
    acc = BoxAcc()
    for shp in shapes:
        r = solid(sc.shape, [(v.to_img(shp, v.post_dx), 1.0)], 0.45, 0.4, sc.rim_w)
        if r is not None:
            bone[r[0]] += r[1]
            acc.add(r[0], r[2] > 0.25)
    return acc


def _segment(p0: np.ndarray, p1: np.ndarray, r: float) -> np.ndarray:
    d = p1 - p0
    nrm = np.array([-d[1], d[0]]) / (np.hypot(*d) + 1e-9) * r
    return np.array([p0 + nrm, p1 + nrm, p1 - nrm, p0 - nrm])


def _implant(rng: Rng, sc: Scene, verts: list[Vert], k: int, m: int, metal: np.ndarray) -> BoxAcc:
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
            polys.append(ellipse(head[0], head[1], 0.13 * a, 0.13 * a, 24))
            heads.append(head)
        ext = rng.uniform(0.1, 0.3) * verts[k].h
        ends = [heads[0] + (0, -ext)] + heads + [heads[-1] + (0, ext)]
        for p0, p1 in zip(ends[:-1], ends[1:]):
            polys.append(_segment(np.asarray(p0), np.asarray(p1), 0.055 * verts[k].a))
    acc = BoxAcc()
    for poly in polys:
        r = raster(sc.shape, [(poly, 1.0)])
        if r is not None:
            metal[r[0]] = np.maximum(metal[r[0]], METAL * r[1])
            acc.add(r[0], r[1] > 0.25)
    return acc


def _other(rng: Rng, sc: Scene, v: Vert, bone: np.ndarray) -> BoxAcc:
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
    acc = BoxAcc()
    acc.add(sl, wgt > 0.1)
    return acc


def overlay(rng: Rng, sc: Scene, verts: list[Vert], lesions: list[str], claimed: set[int],
             bone: np.ndarray, metal: np.ndarray) -> list[tuple[str, BoxAcc]]:
    n = len(verts)
    out = []
    order = [x for x in LESION_CLASSES if x not in GEOMETRIC and x != "Other lesions"] + ["Other lesions"]
    for lab in sorted((x for x in lesions if x not in GEOMETRIC), key=order.index):
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
