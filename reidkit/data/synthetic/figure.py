"""The canvas and the figure of the painter: `Painter` (shape lists filled in a colour or a garment texture,
tracking the person's mask), the garment textures and limb shapes, and `Figure`, where the parts of one person
go, computed once by `figure` from the identity, the view and the walking phase. Nothing here draws random
numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from reidkit.data.synthetic.identity import colour

__all__ = ["Figure", "Painter", "figure"]


class Painter:
    """Draws shape lists in a colour or through a pattern, tracking the person's mask.

    A shape is ("poly", points), ("ellipse", box) or ("line", points, width); ``fill`` paints a list of them
    in a colour (RGB array) or a garment texture and, unless ``body=False``, adds them to ``mask`` (what
    the shading darkens)."""

    def __init__(self, img: Image.Image):
        self.img = img
        self.draw = ImageDraw.Draw(img)
        self.mask = Image.new("L", img.size, 0)
        self.mdraw = ImageDraw.Draw(self.mask)

    @staticmethod
    def _render(d: ImageDraw.ImageDraw, shapes: list, fill: Any) -> None:
        for s in shapes:
            if s[0] == "poly":
                d.polygon(s[1], fill=fill)
            elif s[0] == "ellipse":
                d.ellipse(s[1], fill=fill)
            else:  # ("line", points, width): thick line with round joints
                d.line(s[1], fill=fill, width=max(1, int(s[2])))
                rad = s[2] / 2
                for x, y in s[1]:
                    d.ellipse((x - rad, y - rad, x + rad, y + rad), fill=fill)

    def fill(self, shapes: list, paint: Any, body: bool = True) -> None:
        if isinstance(paint, _Tex):
            m = Image.new("L", self.img.size, 0)
            self._render(ImageDraw.Draw(m), shapes, 255)
            x0, y0 = paint.x0, paint.y0
            self.img.paste(paint.img, (x0, y0), m.crop((x0, y0, x0 + paint.img.width, y0 + paint.img.height)))
        else:
            self._render(self.draw, shapes, colour(paint))
        if body:
            self._render(self.mdraw, shapes, 255)


@dataclass(frozen=True)
class _Tex:
    """A garment texture covering only the person's region (x0, y0) of the canvas."""

    img: Image.Image
    x0: int
    y0: int


def _pattern(
    kind: str,
    c1: np.ndarray,
    c2: np.ndarray,
    period: float,
    region: tuple[int, int, int, int],
    origin: tuple[float, float],
) -> _Tex | np.ndarray:
    """A garment texture over `region` of the canvas (or the plain colour)."""
    if kind == "plain":
        return c1
    x0, y0, x1, y1 = region
    p = max(3.0, period)
    xs = (np.arange(x0, x1, dtype=np.float32) - origin[0]) / p
    ys = (np.arange(y0, y1, dtype=np.float32) - origin[1]) / p
    h, w = len(ys), len(xs)
    m: np.ndarray
    if kind == "hstripes":
        m = np.broadcast_to(((ys % 1.0) < 0.45)[:, None], (h, w))
    elif kind == "vstripes":
        m = np.broadcast_to(((xs % 1.0) < 0.4)[None, :], (h, w))
    elif kind == "checks":  # plaid: two stripe directions blended
        m = (((xs % 1.0) < 0.5)[None, :].astype(np.float32) + ((ys % 1.0) < 0.5)[:, None]) / 2.0
    else:  # dots
        fx, fy = (xs % 1.0) - 0.5, (ys % 1.0) - 0.5
        m = (fx[None, :] ** 2 + fy[:, None] ** 2) < 0.07
    m = np.asarray(m, dtype=np.float32)[..., None]
    arr = c1[None, None, :] * (1 - m) + c2[None, None, :] * m
    return _Tex(Image.fromarray(arr.astype(np.uint8)), x0, y0)


def _quad(p0: tuple, p1: tuple, w0: float, w1: float) -> tuple:
    """A tapered segment (limb) from p0 to p1 as a polygon."""
    dx, dy = p1[0] - p0[0], p1[1] - p0[1]
    n = math.hypot(dx, dy) or 1.0
    nx, ny = -dy / n, dx / n
    return (
        "poly",
        [
            (p0[0] + nx * w0 / 2, p0[1] + ny * w0 / 2),
            (p1[0] + nx * w1 / 2, p1[1] + ny * w1 / 2),
            (p1[0] - nx * w1 / 2, p1[1] - ny * w1 / 2),
            (p0[0] - nx * w0 / 2, p0[1] - ny * w0 / 2),
        ],
    )


def _limb(p0: tuple, p1: tuple, p2: tuple, w0: float, w1: float, w2: float) -> list:
    """Two tapered segments with rounded joints (thigh+shin or upper arm+forearm)."""
    return [
        _quad(p0, p1, w0, w1),
        _quad(p1, p2, w1, w2),
        ("ellipse", (p1[0] - w1 / 2, p1[1] - w1 / 2, p1[0] + w1 / 2, p1[1] + w1 / 2)),
        ("ellipse", (p0[0] - w0 / 2, p0[1] - w0 / 2, p0[0] + w0 / 2, p0[1] + w0 / 2)),
    ]


def _point_on(p0: tuple, p1: tuple, p2: tuple, t: float) -> tuple:
    """A point a fraction t along the two-segment limb p0-p1-p2 (t in [0, 2])."""
    if t <= 1:
        return (p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t)
    t -= 1
    return (p1[0] + (p2[0] - p1[0]) * t, p1[1] + (p2[1] - p1[1]) * t)


# ----------------------------------------------------------------------------- the figure
_FAR_SHADE = 0.72  # far-side limbs (side views) are drawn in shadow at this brightness


@dataclass(frozen=True)
class Figure:
    """Where the parts of one person go on the (2x) canvas, computed once by `figure`.

    ``u`` is the head unit (a person is ~7.6 of them tall; ``height`` already scaled by the identity's
    ``height``) and ``top`` the top of the head. ``side`` is a left/right view, ``d`` the facing direction
    there (+1 right, -1 left). ``sw``/``ww``/``hw`` are the half-widths at shoulder, waist and hip.
    ``legs`` are (hip, knee, ankle) and ``arms`` (shoulder, elbow, hand) joints; in side views the near one
    comes first. ``upaint``/``lpaint`` are the upper/lower garments' paint: a colour or a texture.
    """

    idt: dict
    view: str
    side: bool
    d: float
    cx: float
    feet: float
    top: float
    height: float
    u: float
    shoulder_y: float
    waist_y: float
    hip_y: float
    sw: float
    ww: float
    hw: float
    upaint: Any
    lpaint: Any
    leg_skin: np.ndarray
    legs: list
    arms: list
    widths: tuple  # (thigh, knee, ankle, upper arm, elbow, wrist) widths
    head: tuple  # (centre x, centre y, x radius, y radius)


def _side_limbs(
    phase: float, cx: float, u: float, d: float, shoulder_y: float, hip_y: float, ankle_y: float
) -> tuple[list, list]:
    """Legs and arms seen from the side: near leg then far leg in anti-phase, arms swinging against them."""
    legs, arms = [], []
    for s in (0.0, math.pi):
        ph = phase + s
        a = 0.42 * math.sin(ph)  # thigh angle, forward positive
        knee = (cx + d * math.sin(a) * 1.8 * u, hip_y + math.cos(a) * 1.8 * u)
        sa = a - 0.7 * max(0.0, math.cos(ph))  # the knee flexes while the leg swings forward
        ankle = (knee[0] + d * math.sin(sa) * 1.75 * u, knee[1] + math.cos(sa) * 1.75 * u)
        legs.append([(cx, hip_y), knee, ankle])
        b = -0.8 * a  # arms swing against the legs
        sh = (cx - d * 0.05 * u, shoulder_y + 0.2 * u)
        elbow = (sh[0] + d * math.sin(b) * 1.35 * u, sh[1] + math.cos(b) * 1.35 * u)
        fb = b + 0.35
        hand = (elbow[0] + d * math.sin(fb) * 1.25 * u, elbow[1] + math.cos(fb) * 1.25 * u)
        arms.append((sh, elbow, hand))
    # the lower foot touches the ground: lift the hips if needed (never stretch the legs)
    shift = ankle_y - max(legs[0][2][1], legs[1][2][1])
    legs = [[(p[0], p[1] + shift) for p in leg] for leg in legs]
    return legs, arms


def _front_limbs(
    phase: float, cx: float, u: float, ws: float, sw: float, shoulder_y: float, hip_y: float, ankle_y: float
) -> tuple[list, list]:
    """Legs and arms seen from the front or back: left then right, one foot lifted by the walking phase."""
    legs, arms = [], []
    lift = 0.16 * u * math.sin(phase)
    for s in (-1.0, 1.0):
        hx = cx + s * 0.4 * ws * u
        ay = ankle_y - max(0.0, s * lift)
        ax = cx + s * 0.33 * ws * u
        legs.append(((hx, hip_y), ((hx + ax) / 2, (hip_y + ay) / 2), (ax, ay)))
        sx = cx + s * (sw - 0.2 * u)
        sh = (sx, shoulder_y + 0.22 * u)
        reach = 1.0 - 0.1 * (1 + s * math.sin(phase))  # forward-swinging arm looks shorter
        elbow = (sx + s * 0.18 * u, sh[1] + 1.35 * u * reach)
        hand = (sx + s * 0.12 * u, elbow[1] + 1.25 * u * reach)
        arms.append((sh, elbow, hand))
    return legs, arms


def figure(size: tuple[int, int], idt: dict, view: str, phase: float, cx: float, feet: float, height: float) -> Figure:
    """The geometry and garment paints of identity ``idt`` standing on ``feet`` at ``cx`` of a canvas of ``size``.

    ``view`` is front/back/left/right, ``phase`` the walking phase (radians) and ``height`` the height in
    pixels of an average person (the identity's own ``height`` factor is applied here).
    """
    height *= idt["height"]
    u = height / 7.6  # head unit: a person is ~7.5 heads tall
    ws = idt["width"]
    top = feet - height
    side = view in ("left", "right")
    d = 1.0 if view == "right" else -1.0  # facing direction in side views
    shoulder_y, waist_y, hip_y = top + 1.4 * u, top + 3.5 * u, top + 3.95 * u
    ankle_y = feet - 0.22 * u
    sw = (0.5 if side else 0.98 * ws) * u
    ww = (0.44 if side else 0.74 * ws) * u
    hw = (0.46 if side else 0.82 * ws) * u
    period = idt["period"] * u * 2
    origin = (cx, top)
    region = (
        max(0, int(cx - 2.6 * u)),
        max(0, int(top)),
        min(size[0], int(cx + 2.6 * u) + 1),
        min(size[1], int(feet) + 1),
    )
    upaint = _pattern(idt["upper_tex"], idt["upper"], idt["upper2"], period, region, origin)
    lpaint = _pattern(idt["lower_tex"], idt["lower"], idt["lower2"], period * 1.3, region, origin)
    leg_skin = idt["tights"] if idt["tights"] is not None else idt["skin"]
    if side:
        legs, arms = _side_limbs(phase, cx, u, d, shoulder_y, hip_y, ankle_y)
    else:
        legs, arms = _front_limbs(phase, cx, u, ws, sw, shoulder_y, hip_y, ankle_y)
    widths = (0.46 * u * (ws if not side else 1.0), 0.36 * u, 0.26 * u, 0.32 * u, 0.27 * u, 0.2 * u)
    head = (cx + (d * 0.08 * u if side else 0.0), top + 0.62 * u, (0.43 if side else 0.4) * u, 0.52 * u)
    return Figure(
        idt,
        view,
        side,
        d,
        cx,
        feet,
        top,
        height,
        u,
        shoulder_y,
        waist_y,
        hip_y,
        sw,
        ww,
        hw,
        upaint,
        lpaint,
        leg_skin,
        legs,
        arms,
        widths,
        head,
    )
