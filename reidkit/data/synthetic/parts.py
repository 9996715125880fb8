"""The parts of a painted person: `draw_behind`, `draw_leg`, `draw_hips`, `draw_torso`, `draw_backpack`,
`draw_bag`, `draw_arm`, `draw_head`, `draw_hat`. Each takes (painter, figure) and draws only from the
identity's attributes (see `reidkit.data.synthetic.figure`), so a new accessory is one more function called
in `draw_person` at its depth."""

from __future__ import annotations

from typing import Any

import numpy as np

from reidkit.data.synthetic.figure import Figure, Painter, _limb, _point_on, _quad, _Tex

__all__ = [
    "draw_arm",
    "draw_backpack",
    "draw_bag",
    "draw_behind",
    "draw_hat",
    "draw_head",
    "draw_hips",
    "draw_leg",
    "draw_torso",
]


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
