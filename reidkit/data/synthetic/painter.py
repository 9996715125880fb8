"""The painter: a person drawn with PIL at 2x (body parts, garments, patterns, shading, silhouettes, occluders).

`draw_person` is the entry point. It computes a `Figure` (joints, widths, garment paints) once and paints
the parts back to front with a `Painter`: `draw_behind`, `draw_leg`, `draw_hips`, `draw_torso`,
`draw_backpack`, `draw_bag`, `draw_arm`, `draw_head`, `draw_hat`, then shades the body. Each part takes
(painter, figure) and draws only from the identity's attributes, so a new accessory is one more function
called in `draw_person` at its depth. None of them draws random numbers (only the renderer's crowd
and occluder shapes, `_silhouette` and `_occluder`, take a generator).

The canvas and the geometry live in `figure` (`Painter`, `Figure`, `figure`), the parts in `parts`; both
are re-exported here, where other generators (`scene`) find them.
"""

from __future__ import annotations


import numpy as np
from PIL import Image, ImageDraw

from reidkit.data.synthetic.figure import _FAR_SHADE, Figure, Painter, figure
from reidkit.data.synthetic.identity import (
    _CLOTH,
    _CLOTH_P,
    _HAIR,
    _SKIN,
    colour,
)
from reidkit.data.synthetic.parts import (
    draw_arm,
    draw_backpack,
    draw_bag,
    draw_behind,
    draw_hat,
    draw_head,
    draw_hips,
    draw_leg,
    draw_torso,
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
