"""The painter: a person drawn with PIL at 2x (body parts, garments, patterns, shading, silhouettes, occluders).

`draw_person` is the entry point. It computes a `Figure` (joints, widths, garment paints) once and paints
the parts back to front with a `Painter`: `draw_behind`, `draw_leg`, `draw_hips`, `draw_torso`,
`draw_backpack`, `draw_bag`, `draw_arm`, `draw_head`, `draw_hat`, then shades the body. Each part takes
(painter, figure) and draws only from the identity's attributes, so a new accessory is one more function
called in `draw_person` at its depth. None of them draws random numbers (only the renderer's crowd
and occluder shapes, `_silhouette` and `_occluder`, take a generator).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from reidkit.data.synthetic.identity import (  # noqa: F401
    _CLOTH,
    _CLOTH_P,
    _HAIR,
    _SKIN,
    colour,
)

__all__ = [
    "Figure",
    "Painter",
    "draw_arm",
    "draw_backpack",
    "draw_bag",
    "draw_behind",
    "draw_hat",
    "draw_head",
    "draw_hips",
    "draw_leg",
    "draw_person",
    "draw_torso",
    "figure",
]


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


# ----------------------------------------------------------------------------- the parts
def _shaded(paint: Any, shade: float, plain: np.ndarray | None = None) -> Any:
    """``paint`` darkened by ``shade`` (< 1 for far limbs); a texture falls back to its ``plain`` colour there."""
    if shade >= 1:
        return paint
    base = plain if isinstance(paint, _Tex) else paint
    assert base is not None, "a texture is shaded through its plain colour"
    return base * shade


def draw_leg(P: Painter, f: Figure, leg: tuple, shade: float = 1.0) -> None:
    """One leg (hip, knee, ankle): a trouser leg, or bare/tights with shorts over the thigh, then the shoe."""
    idt, u = f.idt, f.u
    thigh, knee_w, ankle_w = f.widths[:3]
    p0, p1, p2 = leg
    if idt["lower_type"] == "trousers":
        P.fill(_limb(p0, p1, p2, thigh, knee_w, ankle_w), _shaded(f.lpaint, shade, idt["lower"]))
    else:
        P.fill(_limb(p0, p1, p2, thigh * 0.8, knee_w * 0.85, ankle_w), _shaded(f.leg_skin, shade))
        if idt["lower_type"] == "shorts":
            kp = _point_on(p0, p1, p2, 0.85)
            P.fill([_quad(p0, kp, thigh * 1.05, knee_w * 1.15)], _shaded(f.lpaint, shade, idt["lower"]))
    sx, sy = p2
    shoes, d = idt["shoes"], f.d
    if f.side:  # the shoe points forward
        P.fill(
            [("ellipse", (sx - 0.25 * u + d * 0.15 * u, sy - 0.1 * u, sx + 0.3 * u + d * 0.2 * u, sy + 0.25 * u))],
            _shaded(shoes, shade),
        )
    else:
        P.fill([("ellipse", (sx - 0.22 * u, sy - 0.12 * u, sx + 0.22 * u, sy + 0.26 * u))], _shaded(shoes, shade))


def draw_arm(P: Painter, f: Figure, arm: tuple, shade: float = 1.0) -> None:
    """One arm (shoulder, elbow, hand): the bare arm, the sleeve of the upper garment over it, then the hand."""
    skin = f.idt["skin"]
    arm_w, elbow_w, wrist_w = f.widths[3:]
    p0, p1, p2 = arm
    P.fill(_limb(p0, p1, p2, arm_w, elbow_w, wrist_w), _shaded(skin, shade))
    sleeve_end = {"tshirt": 0.55, "longsleeve": 1.92, "jacket": 1.95}[f.idt["upper_type"]]
    e = _point_on(p0, p1, p2, sleeve_end)
    if sleeve_end > 1:
        shapes = [
            _quad(p0, p1, arm_w * 1.2, elbow_w * 1.2),
            _quad(p1, e, elbow_w * 1.2, wrist_w * 1.25),
            ("ellipse", (p1[0] - elbow_w * 0.6, p1[1] - elbow_w * 0.6, p1[0] + elbow_w * 0.6, p1[1] + elbow_w * 0.6)),
        ]
    else:
        shapes = [_quad(p0, e, arm_w * 1.2, elbow_w * 1.25)]
    shapes.append(("ellipse", (p0[0] - arm_w * 0.6, p0[1] - arm_w * 0.6, p0[0] + arm_w * 0.6, p0[1] + arm_w * 0.6)))
    P.fill(shapes, _shaded(f.upaint, shade, f.idt["upper"]))
    hx, hy = p2
    P.fill(
        [("ellipse", (hx - wrist_w * 0.6, hy - wrist_w * 0.4, hx + wrist_w * 0.6, hy + wrist_w * 0.9))],
        _shaded(skin, shade),
    )


def draw_behind(P: Painter, f: Figure) -> None:
    """What lies behind the body: long hair falling behind the head, a backpack sticking out in side views."""
    idt, u, d, cx = f.idt, f.u, f.d, f.cx
    _, head_cy, hrx, _ = f.head
    if idt["hair_style"] == "long" and f.view != "back":
        x0 = cx - hrx * 1.15 - (d * 0.25 * u if f.side else 0)
        P.fill(
            [
                (
                    "poly",
                    [
                        (x0, head_cy),
                        (x0 + hrx * 2.3, head_cy),
                        (x0 + hrx * 2.4, f.shoulder_y + 0.9 * u),
                        (x0 - 0.1 * u, f.shoulder_y + 0.9 * u),
                    ],
                )
            ],
            idt["hair"],
        )
    bp = idt["backpack"]
    if bp is not None and f.side:  # pack sticks out behind the torso
        bw, bh = 0.75 * u * bp[1], 1.9 * u * bp[1]
        bx = cx - d * (0.45 * u + bw / 2)
        y0 = f.shoulder_y + 0.2 * u
        P.fill(
            [("poly", [(bx - bw / 2, y0), (bx + bw / 2, y0), (bx + bw / 2, y0 + bh), (bx - bw / 2, y0 + bh)])], bp[0]
        )


def draw_hips(P: Painter, f: Figure) -> None:
    """The lower garment over the legs: a flared skirt, or the block joining trouser/shorts legs at the crotch."""
    u, cx, hw, waist_y = f.u, f.cx, f.hw, f.waist_y
    lower_type = f.idt["lower_type"]
    if lower_type == "skirt":
        flare = 1.35 if not f.side else 1.6
        P.fill(
            [
                (
                    "poly",
                    [
                        (cx - hw, waist_y),
                        (cx + hw, waist_y),
                        (cx + hw * flare, f.top + 5.5 * u),
                        (cx - hw * flare, f.top + 5.5 * u),
                    ],
                )
            ],
            f.lpaint,
        )
    elif lower_type in ("trousers", "shorts"):
        P.fill(
            [
                (
                    "poly",
                    [
                        (cx - hw, waist_y),
                        (cx + hw, waist_y),
                        (cx + hw * 0.95, f.hip_y + 0.45 * u),
                        (cx - hw * 0.95, f.hip_y + 0.45 * u),
                    ],
                )
            ],
            f.lpaint,
        )


def draw_torso(P: Painter, f: Figure) -> None:
    """Neck and upper garment (a jacket is longer and, seen from the front, open over the shirt), then its print."""
    idt, u, cx, view = f.idt, f.u, f.cx, f.view
    sw, ww, hw, shoulder_y, waist_y = f.sw, f.ww, f.hw, f.shoulder_y, f.waist_y
    head_cy = f.head[1]
    P.fill(
        [
            (
                "poly",
                [
                    (cx - 0.17 * u, head_cy),
                    (cx + 0.17 * u, head_cy),
                    (cx + 0.2 * u, shoulder_y + 0.2 * u),
                    (cx - 0.2 * u, shoulder_y + 0.2 * u),
                ],
            )
        ],
        idt["skin"],
    )
    chest = f.d * 0.1 * u if f.side else 0.0
    hem = f.hip_y + (0.45 * u if idt["upper_type"] == "jacket" else 0.05 * u)
    torso = [
        (
            "poly",
            [
                (cx - sw + chest, shoulder_y),
                (cx + sw + chest, shoulder_y),
                (cx + ww + chest, waist_y),
                (cx + hw, hem),
                (cx - hw, hem),
                (cx - ww + chest, waist_y),
            ],
        ),
        (
            "ellipse",
            (cx - sw + chest - 0.2 * u, shoulder_y - 0.05 * u, cx - sw + chest + 0.4 * u, shoulder_y + 0.55 * u),
        ),
        (
            "ellipse",
            (cx + sw + chest - 0.4 * u, shoulder_y - 0.05 * u, cx + sw + chest + 0.2 * u, shoulder_y + 0.55 * u),
        ),
    ]
    P.fill(torso, f.upaint)
    if idt["upper_type"] == "jacket" and view == "front":  # open jacket shows the shirt underneath
        P.fill(
            [
                (
                    "poly",
                    [
                        (cx - 0.28 * u, shoulder_y + 0.1 * u),
                        (cx + 0.28 * u, shoulder_y + 0.1 * u),
                        (cx + 0.2 * u, hem),
                        (cx - 0.2 * u, hem),
                    ],
                )
            ],
            idt["inner"],
        )
    fp = idt["front_print"] if view == "front" else idt["back_print"] if view == "back" else None
    if fp is not None:
        kind, ink, s = fp
        y0 = shoulder_y + 0.5 * u
        if kind == "circle":
            r0 = 0.45 * u * s
            P.fill([("ellipse", (cx - r0, y0, cx + r0, y0 + 2 * r0))], ink)
        elif kind == "rect":
            P.fill(
                [
                    (
                        "poly",
                        [
                            (cx - 0.5 * u * s, y0),
                            (cx + 0.5 * u * s, y0),
                            (cx + 0.5 * u * s, y0 + 0.8 * u * s),
                            (cx - 0.5 * u * s, y0 + 0.8 * u * s),
                        ],
                    )
                ],
                ink,
            )
        else:
            P.fill(
                [
                    (
                        "poly",
                        [
                            (cx - ww, y0 + 0.3 * u),
                            (cx + ww, y0 + 0.3 * u),
                            (cx + ww, y0 + 0.3 * u + 0.4 * u * s),
                            (cx - ww, y0 + 0.3 * u + 0.4 * u * s),
                        ],
                    )
                ],
                ink,
            )


def draw_backpack(P: Painter, f: Figure) -> None:
    """A backpack over the torso: the pack itself from the back, its straps from the front (side: `draw_behind`)."""
    bp, u, cx = f.idt["backpack"], f.u, f.cx
    if bp is None or f.side:
        return
    if f.view == "back":
        bw, bh = 1.3 * u * bp[1], 1.9 * u * bp[1]
        y0 = f.shoulder_y + 0.25 * u
        P.fill(
            [
                (
                    "poly",
                    [
                        (cx - bw / 2, y0),
                        (cx + bw / 2, y0),
                        (cx + bw / 2 * 1.05, y0 + bh),
                        (cx - bw / 2 * 1.05, y0 + bh),
                    ],
                ),
                ("ellipse", (cx - bw / 2, y0 - 0.25 * u, cx + bw / 2, y0 + 0.35 * u)),
            ],
            bp[0],
        )
        P.fill(
            [
                (
                    "poly",
                    [
                        (cx - bw / 3, y0 + bh * 0.55),
                        (cx + bw / 3, y0 + bh * 0.55),
                        (cx + bw / 3, y0 + bh * 0.92),
                        (cx - bw / 3, y0 + bh * 0.92),
                    ],
                )
            ],
            bp[0] * 0.7,
        )
    else:
        for s in (-1, 1):
            P.fill(
                [
                    (
                        "line",
                        [(cx + s * f.sw * 0.55, f.shoulder_y), (cx + s * f.sw * 0.6, f.waist_y - 0.3 * u)],
                        0.17 * u,
                    )
                ],
                bp[0] * 0.75,
            )


def draw_bag(P: Painter, f: Figure) -> None:
    """A shoulder bag: the strap across the chest, the bag on the hip of its side (hidden behind the body in
    the side view facing away from it)."""
    bag = f.idt["bag"]
    if bag is None:
        return
    u, cx, d, side, shoulder_y, hip_y = f.u, f.cx, f.d, f.side, f.shoulder_y, f.hip_y
    bside, bcol, bs = bag
    img_side = {"front": -bside, "back": bside}.get(f.view, 0)
    visible = (not side) or (d * bside < 0)
    if not side:
        P.fill(
            [
                (
                    "line",
                    [(cx - img_side * f.sw * 0.6, shoulder_y + 0.05 * u), (cx + img_side * f.hw, hip_y - 0.1 * u)],
                    0.12 * u,
                )
            ],
            bcol * 0.8,
        )
        bx = cx + img_side * (f.hw + 0.3 * u)
    else:
        bx = cx - d * 0.1 * u
    if visible:
        bw, bh = 0.75 * u * bs, 0.65 * u * bs
        P.fill(
            [
                (
                    "poly",
                    [
                        (bx - bw / 2, hip_y - 0.3 * u),
                        (bx + bw / 2, hip_y - 0.3 * u),
                        (bx + bw / 2, hip_y - 0.3 * u + bh),
                        (bx - bw / 2, hip_y - 0.3 * u + bh),
                    ],
                )
            ],
            bcol,
        )
        if side:
            P.fill([("line", [(cx + d * 0.05 * u, shoulder_y), (bx, hip_y - 0.3 * u)], 0.12 * u)], bcol * 0.8)


def _draw_hair(P: Painter, f: Figure) -> None:
    """The hair of the identity's style over the head drawn by `draw_head`."""
    idt, u, d, side, view = f.idt, f.u, f.d, f.side, f.view
    hx, head_cy, hrx, hry = f.head
    hair, style, shoulder_y = idt["hair"], idt["hair_style"], f.shoulder_y
    if view == "back":  # hair covers the back of the head
        P.fill([("ellipse", (hx - hrx * 1.06, head_cy - hry * 1.08, hx + hrx * 1.06, head_cy + hry * 0.95))], hair)
        if style == "long":
            P.fill(
                [
                    (
                        "poly",
                        [
                            (hx - hrx * 1.1, head_cy),
                            (hx + hrx * 1.1, head_cy),
                            (hx + hrx * 1.25, shoulder_y + 0.9 * u),
                            (hx - hrx * 1.25, shoulder_y + 0.9 * u),
                        ],
                    )
                ],
                hair,
            )
    elif side:  # top and back half
        xa, xb = sorted((hx - d * hrx * 1.08, hx + d * hrx * 0.15))
        P.fill(
            [
                ("ellipse", (hx - hrx * 1.08, head_cy - hry * 1.1, hx + hrx * 1.05, head_cy + hry * 0.1)),
                ("ellipse", (xa, head_cy - hry * 1.0, xb, head_cy + hry * 0.75)),
            ],
            hair,
        )
    else:  # front: a cap of hair above the forehead
        P.fill([("ellipse", (hx - hrx * 1.08, head_cy - hry * 1.1, hx + hrx * 1.08, head_cy + hry * 0.05))], hair)
        P.fill(
            [
                (
                    "poly",
                    [
                        (hx - hrx * 0.95, head_cy - hry * 0.3),
                        (hx + hrx * 0.95, head_cy - hry * 0.3),
                        (hx + hrx * 0.9, head_cy - hry * 0.1),
                        (hx - hrx * 0.9, head_cy - hry * 0.1),
                    ],
                )
            ],
            hair,
        )
    if style == "bun":
        P.fill([("ellipse", (hx - 0.2 * u, head_cy - hry - 0.3 * u, hx + 0.2 * u, head_cy - hry + 0.1 * u))], hair)
    elif style == "ponytail" and view != "front":
        tx = hx - d * hrx if side else hx
        P.fill(
            [("line", [(tx, head_cy - 0.1 * u), (tx - d * 0.25 * u if side else tx, head_cy + 0.9 * u)], 0.25 * u)],
            hair,
        )
    elif style == "long" and side:
        P.fill(
            [
                (
                    "poly",
                    [
                        (hx - d * hrx * 1.1, head_cy - 0.1 * u),
                        (hx, head_cy - 0.1 * u),
                        (hx - d * 0.1 * u, shoulder_y + 0.7 * u),
                        (hx - d * hrx * 1.2, shoulder_y + 0.7 * u),
                    ],
                )
            ],
            hair,
        )


def draw_head(P: Painter, f: Figure) -> None:
    """The head, its hair (unless bald) and, from the front, eyes: dark marks that survive downsampling."""
    skin, u = f.idt["skin"], f.u
    hx, head_cy, hrx, hry = f.head
    P.fill([("ellipse", (hx - hrx, head_cy - hry, hx + hrx, head_cy + hry))], skin)
    if f.idt["hair_style"] != "bald":
        _draw_hair(P, f)
    if f.view == "front":
        for s in (-1, 1):
            ex = hx + s * 0.16 * u
            P.fill([("ellipse", (ex - 0.05 * u, head_cy - 0.05 * u, ex + 0.05 * u, head_cy + 0.05 * u))], skin * 0.45)


def draw_hat(P: Painter, f: Figure) -> None:
    """A beanie or a cap (its peak forward: seen from the side or, foreshortened, from the front)."""
    hat = f.idt["hat"]
    if hat is None:
        return
    hx, head_cy, hrx, hry = f.head
    kind, hc = hat
    P.fill([("ellipse", (hx - hrx * 1.08, head_cy - hry * 1.15, hx + hrx * 1.08, head_cy + hry * 0.2))], hc)
    if kind == "cap":
        if f.side:
            P.fill(
                [
                    (
                        "poly",
                        [
                            (hx, head_cy - hry * 0.2),
                            (hx + f.d * hrx * 1.7, head_cy - hry * 0.15),
                            (hx + f.d * hrx * 1.6, head_cy),
                            (hx, head_cy),
                        ],
                    )
                ],
                hc * 0.8,
            )
        elif f.view == "front":
            P.fill(
                [("ellipse", (hx - hrx * 1.0, head_cy - hry * 0.35, hx + hrx * 1.0, head_cy + hry * 0.05))], hc * 0.8
            )


# ----------------------------------------------------------------------------- the person
def draw_person(
    img: Image.Image, idt: dict, view: str, phase: float, cx: float, feet: float, height: float, light: float
) -> tuple[float, float, float, float]:
    """Draw identity ``idt`` (from `sample_identity`) into ``img``; returns its bounding box (x0, y0, x1, y1).

    ``view``: "front", "back", "left" or "right"; ``phase``: walking phase in radians; ``cx``, ``feet``: the
    centre line and the ground line in pixels; ``height``: an average person's height in pixels; ``light``:
    in [-1, 1], the side the body is lit from. The parts are painted back to front: things behind the body,
    far limbs in shadow (side views), legs, hips, torso, backpack, bag, near arms, head, hat; then the
    body is shaded as a cylinder lit from above and from ``light``'s side. Nothing here is random: the
    same arguments draw the same pixels.
    """
    P = Painter(img)
    f = figure(img.size, idt, view, phase, cx, feet, height)
    draw_behind(P, f)
    if f.side:  # far arm and far leg first, in shadow, then the near leg
        draw_arm(P, f, f.arms[1], _FAR_SHADE)
        draw_leg(P, f, f.legs[1], _FAR_SHADE)
        draw_leg(P, f, f.legs[0])
    else:
        for leg in f.legs:
            draw_leg(P, f, leg)
    draw_hips(P, f)
    draw_torso(P, f)
    draw_backpack(P, f)
    draw_bag(P, f)
    for arm in f.arms[:1] if f.side else f.arms:
        draw_arm(P, f, arm)
    draw_head(P, f)
    draw_hat(P, f)
    u = f.u
    _shade(img, P.mask, cx, max(f.sw, f.hw) + 0.4 * u, f.top, f.height, light)
    return (cx - f.sw - 0.6 * u, f.top, cx + f.sw + 0.6 * u, feet)


def _shade(
    img: Image.Image, mask: Image.Image, cx: float, half: float, top: float, height: float, light: float
) -> None:
    """Darken the masked body as a cylinder of half-width ``half`` lit from above and from ``light``'s side."""
    w, h = img.size
    x0, x1 = max(0, int(cx - half * 1.8)), min(w, int(cx + half * 1.8) + 1)
    y0, y1 = max(0, int(top - 2)), min(h, int(top + height + 2))
    if x1 <= x0 or y1 <= y0:
        return
    arr = np.asarray(img.crop((x0, y0, x1, y1)), dtype=np.float32)
    m = np.asarray(mask.crop((x0, y0, x1, y1))) > 0
    xs = (np.arange(x0, x1, dtype=np.float32) - cx) / half
    prof = 1.0 - 0.3 * np.clip(xs * xs, 0, 1.6) + 0.14 * light * np.clip(xs, -1.2, 1.2)
    ys = (np.arange(y0, y1, dtype=np.float32) - top) / height
    vert = 1.06 - 0.12 * ys  # light from above
    f = prof[None, :] * vert[:, None]
    out = np.where(m[..., None], arr * f[..., None], arr)
    img.paste(Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)), (x0, y0))


def _silhouette(d: ImageDraw.ImageDraw, cx: float, feet: float, height: float, r: np.random.Generator) -> None:
    """A crude other person: for crowds behind and fragments in front of the subject."""
    u = height / 7.6
    top = feet - height
    up, lo = _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)], _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)]
    skin = _SKIN[r.integers(len(_SKIN))]
    sw = u * r.uniform(0.85, 1.1)
    for s in (-1, 1):
        d.polygon(
            [
                (cx + s * 0.1 * u, top + 3.8 * u),
                (cx + s * 0.8 * u, top + 3.8 * u),
                (cx + s * 0.65 * u, feet),
                (cx + s * 0.2 * u, feet),
            ],
            fill=colour(lo),
        )
    d.polygon(
        [
            (cx - sw, top + 1.4 * u),
            (cx + sw, top + 1.4 * u),
            (cx + 0.85 * u, top + 4.1 * u),
            (cx - 0.85 * u, top + 4.1 * u),
        ],
        fill=colour(up),
    )
    d.ellipse((cx - 0.4 * u, top + 0.1 * u, cx + 0.4 * u, top + 1.2 * u), fill=colour(skin))
    d.ellipse((cx - 0.42 * u, top + 0.05 * u, cx + 0.42 * u, top + 0.6 * u), fill=colour(_HAIR[r.integers(len(_HAIR))]))


def _occluder(img: Image.Image, box: tuple, r: np.random.Generator, u: float) -> None:
    """Something between camera and subject: a pole, a passer-by's fragment or a car."""
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    kind = r.choice(["pole", "person", "car"], p=[0.4, 0.35, 0.25])
    if kind == "pole":
        px = r.uniform(x0 + 0.05 * bw, x1 - 0.05 * bw)
        pw = r.uniform(0.25, 0.6) * u
        d.rectangle(
            (px - pw / 2, 0, px + pw / 2, img.size[1]), fill=colour(r.uniform(40, 140) * np.array((1, 1, 1.05)))
        )
    elif kind == "person":
        s = r.choice([-1, 1])
        cx = (x0 + x1) / 2 + s * bw * r.uniform(0.55, 0.85)
        _silhouette(d, cx, y1 + r.uniform(0, 0.1) * bh, bh * r.uniform(0.95, 1.1), r)
    else:
        top = y1 - r.uniform(0.25, 0.45) * bh
        s = r.choice([-1, 1])
        cxa = (x0 + x1) / 2 + s * bw * r.uniform(0.1, 0.6)
        cw = bw * 2.2
        body = _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)]
        d.rounded_rectangle((cxa - cw / 2, top, cxa + cw / 2, y1 + 0.3 * bh), radius=int(0.1 * bh), fill=colour(body))
        d.rectangle((cxa - cw * 0.35, top + 0.04 * bh, cxa + cw * 0.35, top + 0.14 * bh), fill=colour((60, 75, 90)))
        for s2 in (-1, 1):
            wx = cxa + s2 * cw * 0.33
            d.ellipse((wx - 0.08 * bh, y1 - 0.08 * bh, wx + 0.08 * bh, y1 + 0.08 * bh), fill=(20, 20, 20))
