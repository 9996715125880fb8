"""The painter: a person drawn with PIL at 2x (body parts, garments, patterns, shading, silhouettes, occluders)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from reidkit.data.synthetic.identity import (  # noqa: F401
    _CLOTH, _CLOTH_P, _HAIR, _SKIN, _col,
)


class _Painter:
    """Draws shape lists in a colour or through a pattern, tracking the person's mask."""

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
            self._render(self.draw, shapes, _col(paint))
        if body:
            self._render(self.mdraw, shapes, 255)


@dataclass(frozen=True)
class _Tex:
    """A garment texture covering only the person's region (x0, y0) of the canvas."""

    img: Image.Image
    x0: int
    y0: int


def _pattern(kind: str, c1: np.ndarray, c2: np.ndarray, period: float, region: tuple[int, int, int, int],
             origin: tuple[float, float]) -> _Tex | np.ndarray:
    """A garment texture over `region` of the canvas (or the plain colour)."""
    if kind == "plain":
        return c1
    x0, y0, x1, y1 = region
    p = max(3.0, period)
    xs = (np.arange(x0, x1, dtype=np.float32) - origin[0]) / p
    ys = (np.arange(y0, y1, dtype=np.float32) - origin[1]) / p
    h, w = len(ys), len(xs)
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
    return ("poly", [(p0[0] + nx * w0 / 2, p0[1] + ny * w0 / 2), (p1[0] + nx * w1 / 2, p1[1] + ny * w1 / 2),
                     (p1[0] - nx * w1 / 2, p1[1] - ny * w1 / 2), (p0[0] - nx * w0 / 2, p0[1] - ny * w0 / 2)])


def _limb(p0: tuple, p1: tuple, p2: tuple, w0: float, w1: float, w2: float) -> list:
    """Two tapered segments with rounded joints (thigh+shin or upper arm+forearm)."""
    return [_quad(p0, p1, w0, w1), _quad(p1, p2, w1, w2),
            ("ellipse", (p1[0] - w1 / 2, p1[1] - w1 / 2, p1[0] + w1 / 2, p1[1] + w1 / 2)),
            ("ellipse", (p0[0] - w0 / 2, p0[1] - w0 / 2, p0[0] + w0 / 2, p0[1] + w0 / 2))]


def _point_on(p0: tuple, p1: tuple, p2: tuple, t: float) -> tuple:
    """A point a fraction t along the two-segment limb p0-p1-p2 (t in [0, 2])."""
    if t <= 1:
        return (p0[0] + (p1[0] - p0[0]) * t, p0[1] + (p1[1] - p0[1]) * t)
    t -= 1
    return (p1[0] + (p2[0] - p1[0]) * t, p1[1] + (p2[1] - p1[1]) * t)


def _draw_person(img: Image.Image, idt: dict, view: str, phase: float, cx: float, feet: float,
                 height: float, light: float) -> tuple[float, float, float, float]:
    """Draw one person; returns the person's bounding box (x0, y0, x1, y1)."""
    P = _Painter(img)
    size = img.size
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
    skin, hair, shoes = idt["skin"], idt["hair"], idt["shoes"]
    upper_type, lower_type = idt["upper_type"], idt["lower_type"]
    period = idt["period"] * u * 2
    origin = (cx, top)
    region = (max(0, int(cx - 2.6 * u)), max(0, int(top)), min(size[0], int(cx + 2.6 * u) + 1), min(size[1], int(feet) + 1))
    upaint = _pattern(idt["upper_tex"], idt["upper"], idt["upper2"], period, region, origin)
    lpaint = _pattern(idt["lower_tex"], idt["lower"], idt["lower2"], period * 1.3, region, origin)
    leg_skin = idt["tights"] if idt["tights"] is not None else skin
    dim = 0.72  # far-side limbs are in shadow

    # ---- limbs geometry
    legs, arms = [], []
    if side:
        for s in (0.0, math.pi):  # near leg, then far leg in anti-phase
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
        legs = [tuple((p[0], p[1] + shift) for p in leg) for leg in legs]
    else:
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
    thigh, knee_w, ankle_w = 0.46 * u * (ws if not side else 1.0), 0.36 * u, 0.26 * u
    arm_w, elbow_w, wrist_w = 0.32 * u, 0.27 * u, 0.2 * u

    def k(paint: Any, shade: float, plain: np.ndarray | None = None) -> Any:
        # far limbs are darker; a textured garment falls back to its base colour there
        if shade >= 1:
            return paint
        return (plain if isinstance(paint, _Tex) else paint) * shade

    def draw_leg(leg: tuple, shade: float) -> None:
        p0, p1, p2 = leg
        if lower_type == "trousers":
            P.fill(_limb(p0, p1, p2, thigh, knee_w, ankle_w), k(lpaint, shade, idt["lower"]))
        else:
            P.fill(_limb(p0, p1, p2, thigh * 0.8, knee_w * 0.85, ankle_w), k(leg_skin, shade))
            if lower_type == "shorts":
                kp = _point_on(p0, p1, p2, 0.85)
                P.fill([_quad(p0, kp, thigh * 1.05, knee_w * 1.15)], k(lpaint, shade, idt["lower"]))
        sx, sy = p2
        if side:  # the shoe points forward
            P.fill([("ellipse", (sx - 0.25 * u + d * 0.15 * u, sy - 0.1 * u, sx + 0.3 * u + d * 0.2 * u, sy + 0.25 * u))],
                   k(shoes, shade))
        else:
            P.fill([("ellipse", (sx - 0.22 * u, sy - 0.12 * u, sx + 0.22 * u, sy + 0.26 * u))], k(shoes, shade))

    def draw_arm(arm: tuple, shade: float) -> None:
        p0, p1, p2 = arm
        P.fill(_limb(p0, p1, p2, arm_w, elbow_w, wrist_w), k(skin, shade))
        sleeve_end = {"tshirt": 0.55, "longsleeve": 1.92, "jacket": 1.95}[upper_type]
        e = _point_on(p0, p1, p2, sleeve_end)
        if sleeve_end > 1:
            shapes = [_quad(p0, p1, arm_w * 1.2, elbow_w * 1.2), _quad(p1, e, elbow_w * 1.2, wrist_w * 1.25),
                      ("ellipse", (p1[0] - elbow_w * 0.6, p1[1] - elbow_w * 0.6, p1[0] + elbow_w * 0.6, p1[1] + elbow_w * 0.6))]
        else:
            shapes = [_quad(p0, e, arm_w * 1.2, elbow_w * 1.25)]
        shapes.append(("ellipse", (p0[0] - arm_w * 0.6, p0[1] - arm_w * 0.6, p0[0] + arm_w * 0.6, p0[1] + arm_w * 0.6)))
        P.fill(shapes, k(upaint, shade, idt["upper"]))
        hx, hy = p2
        P.fill([("ellipse", (hx - wrist_w * 0.6, hy - wrist_w * 0.4, hx + wrist_w * 0.6, hy + wrist_w * 0.9))], k(skin, shade))

    head_cy = top + 0.62 * u
    hrx, hry = (0.43 if side else 0.4) * u, 0.52 * u
    style = idt["hair_style"]
    # ---- back-most things: long hair / ponytail behind the head, backpack seen from the front
    if style == "long" and view != "back":
        x0 = cx - hrx * 1.15 - (d * 0.25 * u if side else 0)
        P.fill([("poly", [(x0, head_cy), (x0 + hrx * 2.3, head_cy), (x0 + hrx * 2.4, shoulder_y + 0.9 * u),
                          (x0 - 0.1 * u, shoulder_y + 0.9 * u)])], hair)
    bp = idt["backpack"]
    if bp is not None and side:  # pack sticks out behind the torso
        bw, bh = 0.75 * u * bp[1], 1.9 * u * bp[1]
        bx = cx - d * (0.45 * u + bw / 2)
        P.fill([("poly", [(bx - bw / 2, shoulder_y + 0.2 * u), (bx + bw / 2, shoulder_y + 0.2 * u),
                          (bx + bw / 2, shoulder_y + 0.2 * u + bh), (bx - bw / 2, shoulder_y + 0.2 * u + bh)])], bp[0])
    # far limbs (side view) first, in shadow
    if side:
        draw_arm(arms[1], dim)
        draw_leg(legs[1], dim)
    # ---- legs (front/back) / near leg
    if not side:
        for leg in legs:
            draw_leg(leg, 1.0)
    else:
        draw_leg(legs[0], 1.0)
    # ---- skirt over the legs
    if lower_type == "skirt":
        flare = 1.35 if not side else 1.6
        P.fill([("poly", [(cx - hw, waist_y), (cx + hw, waist_y), (cx + hw * flare, top + 5.5 * u),
                          (cx - hw * flare, top + 5.5 * u)])], lpaint)
    elif lower_type in ("trousers", "shorts"):  # hips/crotch block joining the legs
        P.fill([("poly", [(cx - hw, waist_y), (cx + hw, waist_y), (cx + hw * 0.95, hip_y + 0.45 * u),
                          (cx - hw * 0.95, hip_y + 0.45 * u)])], lpaint)
    # ---- neck + torso
    P.fill([("poly", [(cx - 0.17 * u, head_cy), (cx + 0.17 * u, head_cy), (cx + 0.2 * u, shoulder_y + 0.2 * u),
                      (cx - 0.2 * u, shoulder_y + 0.2 * u)])], skin)
    chest = d * 0.1 * u if side else 0.0
    hem = hip_y + (0.45 * u if upper_type == "jacket" else 0.05 * u)
    torso = [("poly", [(cx - sw + chest, shoulder_y), (cx + sw + chest, shoulder_y), (cx + ww + chest, waist_y),
                       (cx + hw, hem), (cx - hw, hem), (cx - ww + chest, waist_y)]),
             ("ellipse", (cx - sw + chest - 0.2 * u, shoulder_y - 0.05 * u, cx - sw + chest + 0.4 * u, shoulder_y + 0.55 * u)),
             ("ellipse", (cx + sw + chest - 0.4 * u, shoulder_y - 0.05 * u, cx + sw + chest + 0.2 * u, shoulder_y + 0.55 * u))]
    P.fill(torso, upaint)
    if upper_type == "jacket" and view == "front":  # open jacket shows the shirt underneath
        P.fill([("poly", [(cx - 0.28 * u, shoulder_y + 0.1 * u), (cx + 0.28 * u, shoulder_y + 0.1 * u),
                          (cx + 0.2 * u, hem), (cx - 0.2 * u, hem)])], idt["inner"])
    fp = idt["front_print"] if view == "front" else idt["back_print"] if view == "back" else None
    if fp is not None:
        kind, colour, s = fp
        y0 = shoulder_y + 0.5 * u
        if kind == "circle":
            r0 = 0.45 * u * s
            P.fill([("ellipse", (cx - r0, y0, cx + r0, y0 + 2 * r0))], colour)
        elif kind == "rect":
            P.fill([("poly", [(cx - 0.5 * u * s, y0), (cx + 0.5 * u * s, y0), (cx + 0.5 * u * s, y0 + 0.8 * u * s),
                              (cx - 0.5 * u * s, y0 + 0.8 * u * s)])], colour)
        else:
            P.fill([("poly", [(cx - ww, y0 + 0.3 * u), (cx + ww, y0 + 0.3 * u), (cx + ww, y0 + 0.3 * u + 0.4 * u * s),
                              (cx - ww, y0 + 0.3 * u + 0.4 * u * s)])], colour)
    # ---- backpack (back view: large; front view: straps only)
    if bp is not None and not side:
        if view == "back":
            bw, bh = 1.3 * u * bp[1], 1.9 * u * bp[1]
            y0 = shoulder_y + 0.25 * u
            P.fill([("poly", [(cx - bw / 2, y0), (cx + bw / 2, y0), (cx + bw / 2 * 1.05, y0 + bh), (cx - bw / 2 * 1.05, y0 + bh)]),
                    ("ellipse", (cx - bw / 2, y0 - 0.25 * u, cx + bw / 2, y0 + 0.35 * u))], bp[0])
            P.fill([("poly", [(cx - bw / 3, y0 + bh * 0.55), (cx + bw / 3, y0 + bh * 0.55), (cx + bw / 3, y0 + bh * 0.92),
                              (cx - bw / 3, y0 + bh * 0.92)])], bp[0] * 0.7)
        else:
            for s in (-1, 1):
                P.fill([("line", [(cx + s * sw * 0.55, shoulder_y), (cx + s * sw * 0.6, waist_y - 0.3 * u)], 0.17 * u)],
                       bp[0] * 0.75)
    # ---- shoulder bag: strap across, bag on the hip of its side
    bag = idt["bag"]
    if bag is not None:
        bside, bcol, bs = bag
        img_side = {"front": -bside, "back": bside}.get(view, 0)
        visible = (not side) or (d * bside < 0)
        if not side:
            P.fill([("line", [(cx - img_side * sw * 0.6, shoulder_y + 0.05 * u), (cx + img_side * hw, hip_y - 0.1 * u)],
                     0.12 * u)], bcol * 0.8)
            bx = cx + img_side * (hw + 0.3 * u)
        else:
            bx = cx - d * 0.1 * u
        if visible:
            bw, bh = 0.75 * u * bs, 0.65 * u * bs
            P.fill([("poly", [(bx - bw / 2, hip_y - 0.3 * u), (bx + bw / 2, hip_y - 0.3 * u),
                              (bx + bw / 2, hip_y - 0.3 * u + bh), (bx - bw / 2, hip_y - 0.3 * u + bh)])], bcol)
            if side:
                P.fill([("line", [(cx + d * 0.05 * u, shoulder_y), (bx, hip_y - 0.3 * u)], 0.12 * u)], bcol * 0.8)
    # ---- near limbs
    if side:
        draw_arm(arms[0], 1.0)
    else:
        for arm in arms:
            draw_arm(arm, 1.0)
    # ---- head and hair
    hx = cx + (d * 0.08 * u if side else 0.0)
    head = ("ellipse", (hx - hrx, head_cy - hry, hx + hrx, head_cy + hry))
    P.fill([head], skin)
    if style != "bald":
        if view == "back":  # hair covers the back of the head
            P.fill([("ellipse", (hx - hrx * 1.06, head_cy - hry * 1.08, hx + hrx * 1.06, head_cy + hry * 0.95))], hair)
            if style == "long":
                P.fill([("poly", [(hx - hrx * 1.1, head_cy), (hx + hrx * 1.1, head_cy), (hx + hrx * 1.25, shoulder_y + 0.9 * u),
                                  (hx - hrx * 1.25, shoulder_y + 0.9 * u)])], hair)
        elif side:  # top and back half
            xa, xb = sorted((hx - d * hrx * 1.08, hx + d * hrx * 0.15))
            P.fill([("ellipse", (hx - hrx * 1.08, head_cy - hry * 1.1, hx + hrx * 1.05, head_cy + hry * 0.1)),
                    ("ellipse", (xa, head_cy - hry * 1.0, xb, head_cy + hry * 0.75))], hair)
        else:  # front: a cap of hair above the forehead
            P.fill([("ellipse", (hx - hrx * 1.08, head_cy - hry * 1.1, hx + hrx * 1.08, head_cy + hry * 0.05))], hair)
            P.fill([("poly", [(hx - hrx * 0.95, head_cy - hry * 0.3), (hx + hrx * 0.95, head_cy - hry * 0.3),
                              (hx + hrx * 0.9, head_cy - hry * 0.1), (hx - hrx * 0.9, head_cy - hry * 0.1)])], hair)
        if style == "bun":
            P.fill([("ellipse", (hx - 0.2 * u, head_cy - hry - 0.3 * u, hx + 0.2 * u, head_cy - hry + 0.1 * u))], hair)
        elif style == "ponytail" and view != "front":
            tx = hx - d * hrx if side else hx
            P.fill([("line", [(tx, head_cy - 0.1 * u), (tx - d * 0.25 * u if side else tx, head_cy + 0.9 * u)], 0.25 * u)], hair)
        elif style == "long" and side:
            P.fill([("poly", [(hx - d * hrx * 1.1, head_cy - 0.1 * u), (hx, head_cy - 0.1 * u), (hx - d * 0.1 * u, shoulder_y + 0.7 * u),
                              (hx - d * hrx * 1.2, shoulder_y + 0.7 * u)])], hair)
    if view == "front":  # eyes: tiny dark marks so the face reads as a face after downsampling
        for s in (-1, 1):
            ex = hx + s * 0.16 * u
            P.fill([("ellipse", (ex - 0.05 * u, head_cy - 0.05 * u, ex + 0.05 * u, head_cy + 0.05 * u))], skin * 0.45)
    hat = idt["hat"]
    if hat is not None:
        kind, hc = hat
        P.fill([("ellipse", (hx - hrx * 1.08, head_cy - hry * 1.15, hx + hrx * 1.08, head_cy + hry * 0.2))], hc)
        if kind == "cap":
            if side:
                P.fill([("poly", [(hx, head_cy - hry * 0.2), (hx + d * hrx * 1.7, head_cy - hry * 0.15),
                                  (hx + d * hrx * 1.6, head_cy), (hx, head_cy)])], hc * 0.8)
            elif view == "front":
                P.fill([("ellipse", (hx - hrx * 1.0, head_cy - hry * 0.35, hx + hrx * 1.0, head_cy + hry * 0.05))], hc * 0.8)
    # ---- shading: body is roughly a cylinder lit from one side
    _shade(img, P.mask, cx, max(sw, hw) + 0.4 * u, top, height, light)
    return (cx - sw - 0.6 * u, top, cx + sw + 0.6 * u, feet)


def _shade(img: Image.Image, mask: Image.Image, cx: float, half: float, top: float, height: float, light: float) -> None:
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
        d.polygon([(cx + s * 0.1 * u, top + 3.8 * u), (cx + s * 0.8 * u, top + 3.8 * u), (cx + s * 0.65 * u, feet),
                   (cx + s * 0.2 * u, feet)], fill=_col(lo))
    d.polygon([(cx - sw, top + 1.4 * u), (cx + sw, top + 1.4 * u), (cx + 0.85 * u, top + 4.1 * u), (cx - 0.85 * u, top + 4.1 * u)],
              fill=_col(up))
    d.ellipse((cx - 0.4 * u, top + 0.1 * u, cx + 0.4 * u, top + 1.2 * u), fill=_col(skin))
    d.ellipse((cx - 0.42 * u, top + 0.05 * u, cx + 0.42 * u, top + 0.6 * u), fill=_col(_HAIR[r.integers(len(_HAIR))]))


def _occluder(img: Image.Image, box: tuple, r: np.random.Generator, u: float) -> None:
    """Something between camera and subject: a pole, a passer-by's fragment or a car."""
    d = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    kind = r.choice(["pole", "person", "car"], p=[0.4, 0.35, 0.25])
    if kind == "pole":
        px = r.uniform(x0 + 0.05 * bw, x1 - 0.05 * bw)
        pw = r.uniform(0.25, 0.6) * u
        d.rectangle((px - pw / 2, 0, px + pw / 2, img.size[1]), fill=_col(r.uniform(40, 140) * np.array((1, 1, 1.05))))
    elif kind == "person":
        s = r.choice([-1, 1])
        cx = (x0 + x1) / 2 + s * bw * r.uniform(0.55, 0.85)
        _silhouette(d, cx, y1 + r.uniform(0, 0.1) * bh, bh * r.uniform(0.95, 1.1), r)
    else:
        top = y1 - r.uniform(0.25, 0.45) * bh
        s = r.choice([-1, 1])
        cxa = (x0 + x1) / 2 + s * bw * r.uniform(0.1, 0.6)
        cw = bw * 2.2
        colour = _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)]
        d.rounded_rectangle((cxa - cw / 2, top, cxa + cw / 2, y1 + 0.3 * bh), radius=int(0.1 * bh), fill=_col(colour))
        d.rectangle((cxa - cw * 0.35, top + 0.04 * bh, cxa + cw * 0.35, top + 0.14 * bh), fill=_col((60, 75, 90)))
        for s2 in (-1, 1):
            wx = cxa + s2 * cw * 0.33
            d.ellipse((wx - 0.08 * bh, y1 - 0.08 * bh, wx + 0.08 * bh, y1 + 0.08 * bh), fill=(20, 20, 20))


