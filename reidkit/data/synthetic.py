"""Procedural pedestrian generator that writes Market-1501-format folders, so every loader,
trainer and benchmark can run offline.

People are drawn with PIL at twice the output resolution and downsampled. An identity is a
fixed set of attributes (body shape, skin, hair, garments, colours, textures, accessories);
an image of it varies the view (front/back/left/right), walking phase, camera style,
background, occluders and detector-box jitter. Identities come in small groups sharing
clothing colours (hard negatives), so details such as texture, shoes, hair or a backpack
are what tells them apart.

Randomness is keyed, never sequential: an identity by (seed, domain, pid), an image by
(seed, domain, pid, image index), a camera by (seed, domain, camera). The bytes written are
therefore the same whatever the number of worker processes.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import shutil
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from reidkit.errors import ReIDError

MARKET_DIR = "Market-1501-v15.09.15"
MARKER_NAME = "synthetic.json"
GENERATOR_VERSION = 1
DOMAINS = {"A": 0, "B": 1}
SPLITS = ("bounding_box_train", "bounding_box_test", "query")

_SS = 2  # supersampling factor: draw at 2x, downsample once at the crop (anti-aliasing)
_VIEWS = ("front", "back", "left", "right")

# Stream tags keep identity, group, image, camera and plan randomness independent.
_T_IDENTITY, _T_GROUP, _T_IMAGE, _T_CAMERA, _T_PLAN = 11, 12, 13, 14, 15
# Keys of the people who are not annotated identities (never collide with pids 1..ids).
_DISTRACTOR_KEY = 1_000_000
_JUNK_KEY = 2_000_000
_GROUP_SIZE = 3  # identities per hard-negative group (shared clothing colours)

# ----------------------------------------------------------------------------- palettes
_SKIN = np.array(
    [(250, 222, 196), (238, 196, 160), (222, 172, 130), (196, 136, 98), (160, 104, 70), (108, 70, 46)],
    dtype=np.float32,
)
_SKIN_P = np.array([0.18, 0.24, 0.2, 0.16, 0.12, 0.1])
_HAIR = np.array(
    [(22, 18, 18), (48, 32, 24), (84, 58, 38), (126, 88, 54), (190, 156, 100), (150, 150, 148), (136, 62, 36)],
    dtype=np.float32,
)
_HAIR_P = np.array([0.34, 0.24, 0.14, 0.1, 0.08, 0.06, 0.04])
# Street clothing is mostly dark and neutral; bright colours are rarer (as in Market/Duke).
_CLOTH = np.array(
    [
        (28, 28, 32), (62, 62, 68), (126, 126, 132), (228, 228, 224), (32, 40, 82), (62, 86, 130),
        (44, 82, 172), (122, 170, 218), (172, 32, 38), (102, 28, 38), (226, 142, 172), (230, 122, 42),
        (226, 200, 62), (102, 106, 52), (42, 122, 62), (32, 120, 126), (202, 182, 142), (112, 76, 46),
        (102, 62, 132), (166, 152, 106),
    ],
    dtype=np.float32,
)
_CLOTH_P = np.array(
    [0.15, 0.08, 0.07, 0.1, 0.08, 0.08, 0.05, 0.04, 0.04, 0.03, 0.03, 0.02, 0.03, 0.03, 0.03, 0.02, 0.05, 0.04,
     0.02, 0.01]
)
_CLOTH_P = _CLOTH_P / _CLOTH_P.sum()
_SHOES = np.array([(24, 24, 26), (236, 236, 232), (96, 64, 40), (120, 120, 124), (180, 40, 40), (40, 70, 160)],
                  dtype=np.float32)
_SHOES_P = np.array([0.38, 0.3, 0.12, 0.1, 0.05, 0.05])


def _rng(*keys: int) -> np.random.Generator:
    """A generator keyed by integers (order matters), independent of any other key."""
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def _col(c: Any) -> tuple[int, int, int]:
    return (min(255, max(0, int(c[0]))), min(255, max(0, int(c[1]))), min(255, max(0, int(c[2]))))


def _jitter(r: np.random.Generator, c: np.ndarray, s: float) -> np.ndarray:
    return np.clip(c * (1 + r.normal(0, s, 3)) + r.normal(0, 4, 3), 0, 255)


# ----------------------------------------------------------------------------- identities
@lru_cache(maxsize=4096)
def _identity(seed: int, dom: int, key: int) -> dict:
    """All appearance attributes of one person (deterministic for the key)."""
    r = _rng(seed, dom, _T_IDENTITY, key)
    # Annotated identities share clothing colours and garment types with their group.
    g = _rng(seed, dom, _T_GROUP, (key - 1) // _GROUP_SIZE) if 1 <= key < _DISTRACTOR_KEY else r
    upper = _CLOTH[g.choice(len(_CLOTH), p=_CLOTH_P)]
    lower = _CLOTH[g.choice(len(_CLOTH), p=_CLOTH_P)]
    upper_type = str(g.choice(["tshirt", "longsleeve", "jacket"], p=[0.4, 0.3, 0.3]))
    lower_type = str(g.choice(["trousers", "shorts", "skirt"], p=[0.68, 0.14, 0.18]))
    if r.random() < 0.25:  # some group members differ in the lower garment colour
        lower = _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)]
    idt: dict[str, Any] = {
        "upper": _jitter(r, upper, 0.05),
        "lower": _jitter(r, lower, 0.05),
        "upper_type": upper_type,
        "lower_type": lower_type,
        "upper2": _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)],
        "inner": _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)],
        "upper_tex": str(r.choice(["plain", "hstripes", "vstripes", "checks", "dots"],
                                  p=[0.44, 0.2, 0.08, 0.16, 0.12])),
        "lower_tex": str(r.choice(["plain", "checks", "hstripes"], p=[0.86, 0.09, 0.05])),
        "lower2": _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)],
        "period": float(r.uniform(0.16, 0.42)),
        "skin": _SKIN[r.choice(len(_SKIN), p=_SKIN_P)],
        "hair": _jitter(r, _HAIR[r.choice(len(_HAIR), p=_HAIR_P)], 0.05),
        "hair_style": str(r.choice(["short", "long", "bun", "ponytail", "bald"], p=[0.44, 0.26, 0.08, 0.12, 0.1])),
        "shoes": _SHOES[r.choice(len(_SHOES), p=_SHOES_P)],
        "tights": _CLOTH[0] if r.random() < 0.5 else None,
        "height": float(np.clip(r.normal(1.0, 0.04), 0.9, 1.08)),
        "width": float(np.clip(r.normal(1.0, 0.08), 0.82, 1.2)),
        "front_print": None,
        "back_print": None,
        "backpack": None,
        "bag": None,
        "hat": None,
    }
    if r.random() < 0.3:
        idt["front_print"] = (str(r.choice(["circle", "rect", "band"])), _CLOTH[r.integers(len(_CLOTH))],
                              float(r.uniform(0.5, 1.0)))
    if r.random() < 0.15:
        idt["back_print"] = (str(r.choice(["rect", "band"])), _CLOTH[r.integers(len(_CLOTH))], float(r.uniform(0.5, 1.0)))
    if r.random() < 0.3:
        idt["backpack"] = (_CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)], float(r.uniform(0.85, 1.2)))
    if r.random() < 0.22:
        idt["bag"] = (int(r.choice([-1, 1])), _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)], float(r.uniform(0.8, 1.3)))
    if r.random() < 0.14:
        idt["hat"] = (str(r.choice(["cap", "beanie"])), _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)])
    return idt


# ----------------------------------------------------------------------------- cameras
@lru_cache(maxsize=64)
def _camera(seed: int, dom: int, cam: int) -> dict:
    """Photometric and background style of one camera; domain B is a different family."""
    r = _rng(seed, dom, _T_CAMERA, cam)
    rot = int(_rng(seed, dom, _T_CAMERA, 1000).integers(3))  # every background style gets used
    if dom == 0:  # daylight, mostly outdoor: bright, mild casts, sharp-ish, good JPEG
        style = {
            "bg": ("street", "park", "plaza")[(cam + rot) % 3],
            "gain": r.uniform(0.88, 1.15),
            "cast": np.clip(1 + r.normal(0, 0.04, 3), 0.9, 1.1),
            "gamma": r.uniform(0.88, 1.08),
            "offset": r.uniform(0, 10),
            "blur": r.uniform(0.0, 0.6),
            "res": r.uniform(0.55, 1.0),
            "noise": r.uniform(1.5, 4.5),
            "jpeg": int(r.integers(75, 96)),
            "views": [0.3, 0.3, 0.2, 0.2] if r.random() < 0.5 else [0.15, 0.15, 0.35, 0.35],
        }
    else:  # indoor / evening: darker, strong casts (fluorescent, sodium, LED), blurrier, noisier
        casts = [(0.85, 0.95, 1.22), (0.9, 1.1, 0.88), (1.25, 1.0, 0.7), (1.1, 0.9, 1.1)]
        base = np.array(casts[int(r.integers(len(casts)))])
        style = {
            "bg": ("indoor", "mall", "night")[(cam + rot) % 3],
            "gain": r.uniform(0.55, 0.85),
            "cast": np.clip(base * (1 + r.normal(0, 0.04, 3)), 0.6, 1.35),
            "gamma": r.uniform(1.1, 1.35),
            "offset": r.uniform(4, 24),
            "blur": r.uniform(0.5, 1.3),
            "res": r.uniform(0.4, 0.8),
            "noise": r.uniform(4.0, 9.0),
            "jpeg": int(r.integers(45, 76)),
            "views": [0.35, 0.35, 0.15, 0.15] if r.random() < 0.5 else [0.2, 0.2, 0.3, 0.3],
        }
    style["seed"] = int(r.integers(2**31))
    return style


def _noise_tex(r: np.random.Generator, h: int, w: int, scale: int, amp: float) -> np.ndarray:
    """Smooth value noise (h x w), cheap: upsampled coarse random grid."""
    coarse = r.normal(0, amp, (max(2, h // scale + 2), max(2, w // scale + 2))).astype(np.float32)
    img = Image.fromarray(coarse, mode="F").resize((w, h), Image.BILINEAR)
    return np.asarray(img)


def _make_background(style: str, h: int, w: int, r: np.random.Generator) -> Image.Image:
    """One wide background strip per camera; images crop it at random offsets."""
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    hz = int(h * r.uniform(0.5, 0.62))  # where the wall / vegetation meets the ground
    pick = lambda choices: np.array(choices[int(r.integers(len(choices)))], dtype=np.float32)  # noqa: E731
    if style in ("street", "plaza", "mall", "indoor"):
        wall = pick({"street": [(170, 96, 80), (200, 190, 170), (150, 150, 152), (222, 214, 190)],
                     "plaza": [(190, 200, 210), (210, 205, 195), (120, 130, 140)],
                     "mall": [(230, 225, 215), (60, 60, 70), (200, 170, 130)],
                     "indoor": [(215, 220, 210), (180, 200, 210), (225, 210, 180), (120, 150, 130)]}[style])
        d.rectangle((0, 0, w, hz), fill=_col(wall))
        if style == "street":  # brick courses and windows
            step = int(r.integers(6, 10))
            for y in range(0, hz, step):
                d.line((0, y, w, y), fill=_col(wall * 0.82), width=1)
            x = int(r.integers(0, 40))
            while x < w:
                ww, wh = int(r.integers(30, 60)), int(r.integers(30, 70))
                y0 = int(r.integers(5, max(6, hz - wh - 5)))
                d.rectangle((x, y0, x + ww, y0 + wh), fill=_col(r.uniform(40, 90, 3)), outline=_col(wall * 0.6), width=3)
                x += ww + int(r.integers(25, 90))
        elif style == "plaza":  # distant buildings and sky
            d.rectangle((0, 0, w, hz // 3), fill=_col((180, 200, 225)))
            x = 0
            while x < w:
                bw = int(r.integers(40, 120))
                top = int(r.integers(hz // 6, hz // 2))
                d.rectangle((x, top, x + bw, hz), fill=_col(wall * r.uniform(0.6, 1.1)))
                x += bw
        else:  # shop fronts / posters / panels
            x = int(r.integers(0, 30))
            while x < w:
                pw, ph = int(r.integers(30, 110)), int(r.integers(hz // 3, hz))
                colour = _CLOTH[r.integers(len(_CLOTH))] if r.random() < 0.6 else np.array((150, 180, 200))
                d.rectangle((x, hz - ph, x + pw, hz - 4), fill=_col(colour * r.uniform(0.7, 1.1)),
                            outline=_col(wall * 0.5), width=2)
                if style == "mall":
                    d.rectangle((x + 4, hz - ph - 14, x + pw - 4, hz - ph - 4), fill=_col(r.uniform(30, 250, 3)))
                x += pw + int(r.integers(5, 60))
            if style == "indoor":
                for x in range(int(r.integers(20, 60)), w, int(r.integers(80, 160))):
                    d.ellipse((x, 2, x + 40, 12), fill=(250, 250, 240))
        ground = pick([(150, 148, 144), (120, 118, 116), (176, 166, 150), (96, 96, 100)])
        d.rectangle((0, hz, w, h), fill=_col(ground))
        tile = int(r.integers(14, 34))
        lines = _col(ground * 0.8)
        for y in range(hz, h, tile // 2 + 2):
            d.line((0, y, w, y), fill=lines, width=1)
        for x in range(0, w, tile):
            d.line((x, hz, x + (x - w / 2) * 0.15, h), fill=lines, width=1)
        if style == "indoor" and r.random() < 0.6:  # checkered floor
            dark = _col(ground * 0.65)
            for i, y in enumerate(range(hz, h, tile)):
                for x in range((i % 2) * tile, w, 2 * tile):
                    d.rectangle((x, y, x + tile, y + tile), fill=dark)
    elif style == "park":
        d.rectangle((0, 0, w, hz), fill=_col(pick([(170, 200, 225), (200, 205, 210), (150, 175, 200)])))
        for _ in range(w // 18):
            cx, cy, rad = r.uniform(0, w), r.uniform(0, hz * 0.9), r.uniform(15, 45)
            d.ellipse((cx - rad, cy - rad, cx + rad, cy + rad), fill=_col(r.uniform(0.6, 1.2) * np.array((60, 110, 50))))
        for x in range(int(r.integers(0, 50)), w, int(r.integers(60, 140))):
            d.rectangle((x, hz * 0.45, x + 6, hz), fill=(80, 60, 40))
        grass = pick([(90, 140, 70), (110, 150, 80), (190, 175, 140)])
        d.rectangle((0, hz, w, h), fill=_col(grass))
        d.rectangle((0, hz + (h - hz) * 0.3, w, h), fill=_col(pick([(176, 160, 130), (150, 150, 150)])))
    else:  # night street: dark wall, lamp glows, wet road
        d.rectangle((0, 0, w, hz), fill=_col(r.uniform(20, 50, 3)))
        for x in range(int(r.integers(0, 40)), w, int(r.integers(50, 120))):
            y0 = int(r.integers(5, hz - 30))
            d.rectangle((x, y0, x + 25, y0 + 20), fill=_col(r.uniform(150, 240) * np.array((1.0, 0.85, 0.5))))
        d.rectangle((0, hz, w, h), fill=_col(r.uniform(35, 60, 3)))
        for x in range(int(r.integers(0, 50)), w, int(r.integers(70, 150))):
            d.rectangle((x, hz - int(r.integers(20, 50)), x + 3, h), fill=(70, 70, 60))
    # clutter: benches, bins, bollards
    for _ in range(int(r.integers(1, 4)) * w // 300):
        x, bw, bh = r.uniform(0, w), r.uniform(10, 40), r.uniform(10, 35)
        d.rectangle((x, hz + 4 - bh, x + bw, hz + 4), fill=_col(r.uniform(30, 160, 3)))
    arr = np.asarray(img, dtype=np.float32)
    # Real scenes behind pedestrians are mostly muted (pavement, walls); saturated, contrasty
    # backgrounds would dominate pixel distances more than the people do.
    grey = arr.mean(axis=2, keepdims=True)
    arr = grey + (arr - grey) * 0.5
    arr = arr.mean() + (arr - arr.mean()) * 0.6
    arr = arr + _noise_tex(r, h, w, 12, 10.0)[..., None] + r.normal(0, 3, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))


@lru_cache(maxsize=32)
def _background(seed: int, dom: int, cam: int, h: int, w: int) -> Image.Image:
    cs = _camera(seed, dom, cam)
    return _make_background(cs["bg"], h, w, np.random.default_rng(cs["seed"]))


# ----------------------------------------------------------------------------- drawing
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


# ----------------------------------------------------------------------------- one image
@dataclass(frozen=True)
class _Job:
    path: str
    key: int  # identity key (pid, or distractor/junk key)
    idx: int  # image index within the key, part of the image seed
    cam: int  # 0-based
    kind: str  # "person" | "distractor" | "background" | "junk"
    view: int  # dominant view index for this (person, camera)


def _render(job: _Job, seed: int, dom: int, size: tuple[int, int]) -> Image.Image:
    """Render one detection crop (final size, before JPEG)."""
    H, W = size
    r = _rng(seed, dom, _T_IMAGE, job.key, job.idx)
    cs = _camera(seed, dom, job.cam)
    hs, ws = int(_SS * H * 1.45), int(_SS * W * 2.3)
    bg = _background(seed, dom, job.cam, hs, ws * 4)
    ox = int(r.integers(0, ws * 3))
    scene = bg.crop((ox, 0, ox + ws, hs))
    cx, cy = ws / 2, hs / 2
    height = _SS * H * 0.88
    feet = cy + height / 2
    u = height / 7.6
    # crowd behind the subject
    if r.random() < 0.3:
        d = ImageDraw.Draw(scene)
        for _ in range(int(r.integers(1, 3))):
            s = r.uniform(0.55, 0.9)
            _silhouette(d, cx + r.uniform(-1, 1) * ws * 0.45, feet - (1 - s) * height * 0.35, height * s, r)
    if job.kind != "background":
        key = job.key
        idt = _identity(seed, dom, key)
        probs = np.full(4, 0.25 / 3)
        probs[job.view] = 0.75
        view = _VIEWS[int(r.choice(4, p=probs))]
        # contact shadow under the feet
        sx0, sy0, sx1, sy1 = int(cx - 1.4 * u), int(feet - 0.4 * u), int(cx + 1.4 * u), min(hs, int(feet + 0.4 * u))
        patch = np.asarray(scene.crop((sx0, sy0, sx1, sy1)), dtype=np.float32)
        yy, xx = np.ogrid[sy0:sy1, sx0:sx1]
        patch[((xx - cx) / (1.3 * u)) ** 2 + ((yy - feet) / (0.3 * u)) ** 2 < 1] *= 0.7
        scene.paste(Image.fromarray(patch.astype(np.uint8)), (sx0, sy0))
        _draw_person(scene, idt, view, float(r.uniform(0, 2 * math.pi)), cx + r.normal(0, 0.02) * ws, feet, height,
                     float(r.uniform(-1, 1)))
    # detector box around the person, jittered
    bh = _SS * H * float(np.clip(r.normal(1.02, 0.06), 0.88, 1.18))
    bw = bh * W / H
    bx = cx + r.normal(0, 0.06) * bw
    by = cy + r.normal(0, 0.035) * bh
    if job.kind == "junk":  # badly cropped boxes: a part of the body or mostly background
        mode = int(r.integers(4))
        if mode == 0:
            bh *= r.uniform(0.35, 0.55)
            by = feet - height + bh / 2 + r.uniform(0, 0.1) * height
        elif mode == 1:
            bh *= r.uniform(0.35, 0.55)
            by = feet - bh / 2
        elif mode == 2:
            bx = cx + r.choice([-1, 1]) * bw * r.uniform(0.55, 0.8)
        else:
            bh *= r.uniform(1.25, 1.4)
        bw = bh * W / H * r.uniform(0.7, 1.4)
    elif job.kind == "background":
        bx = cx + r.uniform(-0.5, 0.5) * ws * 0.4
    box = [bx - bw / 2, by - bh / 2, bx + bw / 2, by + bh / 2]
    if job.kind != "background" and r.random() < 0.2:
        _occluder(scene, tuple(box), r, u)
    box = [max(0.0, box[0]), max(0.0, box[1]), min(float(ws), box[2]), min(float(hs), box[3])]
    img = scene.resize((W, H), Image.BILINEAR, box=tuple(box))
    return _photometric(img, cs, r)


def _photometric(img: Image.Image, cs: dict, r: np.random.Generator) -> Image.Image:
    """Camera pipeline: resolution drop, blur, exposure, colour cast, gamma, noise."""
    W, H = img.size
    f = min(1.0, cs["res"] * r.uniform(0.85, 1.15))
    if f < 0.97:
        img = img.resize((max(8, int(W * f)), max(8, int(H * f))), Image.BILINEAR).resize((W, H), Image.BILINEAR)
    blur = cs["blur"] * r.uniform(0.7, 1.3)
    if blur > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    gain = cs["gain"] * math.exp(r.normal(0, 0.1))
    cast = cs["cast"] * (1 + r.normal(0, 0.025, 3))
    arr = np.power(arr, cs["gamma"]) * (gain * cast)[None, None, :]
    arr = arr * 255.0 + cs["offset"] + r.normal(0, cs["noise"], arr.shape)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))


def _render_chunk(args: tuple) -> int:
    """Worker: render and write a list of jobs."""
    jobs, seed, dom, size, root = args
    for job in jobs:
        img = _render(job, seed, dom, size)
        cs = _camera(seed, dom, job.cam)
        q = int(np.clip(cs["jpeg"] + (job.idx * 7 + job.key) % 9 - 4, 30, 98))
        img.save(os.path.join(root, job.path), "JPEG", quality=q)
    return len(jobs)


# ----------------------------------------------------------------------------- the plan
def _plan(ids: int, images_per_id: int, cams: int, seed: int, dom: int, distractors: int,
          junk: int) -> tuple[list[_Job], dict]:
    """Decide every file (name, split, identity, camera) up front, in the parent process."""
    r = _rng(seed, dom, _T_PLAN)
    pids = np.arange(1, ids + 1)
    n_train = (ids + 1) // 2  # Market: 751 train / 750 test identities
    perm = r.permutation(pids)
    train_ids = set(int(p) for p in perm[:n_train])
    jobs: list[_Job] = []
    used: set[str] = set()
    counts = {"train_images": 0, "query": 0, "gallery": 0, "distractors": 0, "junk": 0}
    max_cams = min(cams, max(2, images_per_id // 2))  # leaves gallery matches for every query camera

    def name(pid: int, cam: int, seq: int, frame: int, det: int) -> str:
        prefix = "-1" if pid < 0 else f"{pid:04d}"
        while True:
            n = f"{prefix}_c{cam + 1}s{seq}_{frame:06d}_{det:02d}.jpg"
            if n not in used:
                used.add(n)
                return n
            frame += 1

    for pid in pids:
        pid = int(pid)
        n_c = int(r.integers(2, max_cams + 1))
        pcams = np.sort(r.choice(cams, n_c, replace=False))
        share = r.dirichlet(np.ones(n_c) * 2.0)
        alloc = np.ones(n_c, dtype=int) + r.multinomial(images_per_id - n_c, share)
        split = "bounding_box_train" if pid in train_ids else "bounding_box_test"
        idx = 0
        for cam, n in zip(pcams, alloc):
            cam = int(cam)
            cview = _camera(seed, dom, cam)["views"]
            view = int(r.choice(4, p=cview))
            seq = int(r.integers(1, 7))
            frame = int(r.integers(0, 150000))
            query_at = int(r.integers(n)) if split == "bounding_box_test" else -1
            for k in range(int(n)):
                frame += int(r.integers(3, 60))
                fname = name(pid, cam, seq, frame, int(r.integers(1, 4)))
                sp = "query" if k == query_at else split
                jobs.append(_Job(f"{sp}/{fname}", pid, idx, cam, "person", view))
                counts["train_images" if sp == "bounding_box_train" else "query" if sp == "query" else "gallery"] += 1
                idx += 1
    for k in range(distractors):
        cam = int(r.integers(cams))
        kind = "distractor" if r.random() < 0.55 else "background"
        fname = name(0, cam, int(r.integers(1, 7)), int(r.integers(0, 200000)), int(r.integers(1, 9)))
        jobs.append(_Job(f"bounding_box_test/{fname}", _DISTRACTOR_KEY + k, 0, cam, kind, int(r.integers(4))))
    for k in range(junk):
        cam = int(r.integers(cams))
        # junk is bad crops of the test people themselves (as in Market) or of passers-by
        test_ids = sorted(set(range(1, ids + 1)) - train_ids)
        key = int(r.choice(test_ids)) if r.random() < 0.5 else _JUNK_KEY + k
        fname = name(-1, cam, int(r.integers(1, 7)), int(r.integers(0, 200000)), int(r.integers(1, 9)))
        jobs.append(_Job(f"bounding_box_test/{fname}", key, 100000 + k, cam, "junk", int(r.integers(4))))
    counts["distractors"], counts["junk"] = distractors, junk
    counts["gallery"] += distractors + junk
    counts["train_ids"] = n_train
    counts["test_ids"] = ids - n_train
    counts["images"] = len(jobs)
    return jobs, counts


# ----------------------------------------------------------------------------- public API
@dataclass
class GenerationReport:
    """What `generate_report` did: the tree's root, its counts, and whether it was skipped."""

    root: Path
    counts: dict
    params: dict
    skipped: bool
    seconds: float = 0.0
    images_per_s: float = 0.0
    workers: int = 1
    marker: dict = field(default_factory=dict)


def _check(ids: int, images_per_id: int, cams: int, seed: int, domain: str, size: Any,
           distractors: int | None, junk: int | None) -> tuple[tuple[int, int], int, int]:
    if not isinstance(ids, (int, np.integer)) or ids < 2:
        raise ReIDError(f"synthetic: ids must be an integer >= 2 (half train, half test), got {ids!r}")
    if not isinstance(cams, (int, np.integer)) or cams < 2:
        raise ReIDError(f"synthetic: cams must be an integer >= 2 (queries need a match in another camera), got {cams!r}")
    if not isinstance(images_per_id, (int, np.integer)) or images_per_id < 3:
        raise ReIDError(f"synthetic: images_per_id must be an integer >= 3, got {images_per_id!r}")
    if cams > 9:
        raise ReIDError(f"synthetic: cams must be <= 9 (Market names hold one camera digit), got {cams!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ReIDError(f"synthetic: seed must be a non-negative integer, got {seed!r}")
    if domain not in DOMAINS:
        raise ReIDError(f"synthetic: domain must be one of {sorted(DOMAINS)}, got {domain!r}")
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ReIDError(f"synthetic: size must be (height, width), got {size!r}") from None
    if h < 16 or w < 8 or h > 1024 or w > 512:
        raise ReIDError(f"synthetic: size must be between (16, 8) and (1024, 512), got {size!r}")
    total = ids * images_per_id
    nd = round(0.08 * total) + 1 if distractors is None else distractors  # Market: ~8.5% distractors
    nj = round(0.05 * total) + 1 if junk is None else junk
    for key, v in (("distractors", nd), ("junk", nj)):
        if not isinstance(v, (int, np.integer)) or v < 0:
            raise ReIDError(f"synthetic: {key} must be a non-negative integer, got {v!r}")
    return (h, w), int(nd), int(nj)


def read_marker(root: str | os.PathLike) -> dict | None:
    """The metadata of a generated tree (`<root>/synthetic.json`), or None if absent/unreadable."""
    p = Path(root) / MARKER_NAME
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def generate_report(out: str | os.PathLike, ids: int = 100, images_per_id: int = 16, cams: int = 6, seed: int = 0,
                    domain: str = "A", size: tuple[int, int] = (128, 64), workers: int | None = None,
                    distractors: int | None = None, junk: int | None = None, force: bool = False) -> GenerationReport:
    """Generate (or reuse) a synthetic Market-1501 tree and report counts and speed.

    A tree already at ``out`` with the same parameters is reused; one with other parameters raises
    ReIDError naming both unless ``force`` (then it is replaced).
    """
    (h, w), nd, nj = _check(ids, images_per_id, cams, seed, domain, size, distractors, junk)
    params = {"ids": int(ids), "images_per_id": int(images_per_id), "cams": int(cams), "seed": int(seed),
              "domain": domain, "size": [h, w], "distractors": nd, "junk": nj, "version": GENERATOR_VERSION}
    out = Path(out)
    root = out / MARKET_DIR
    if out.exists() and not out.is_dir():
        raise ReIDError(f"synthetic: output path {out} exists and is not a directory")
    marker = read_marker(root)
    if root.exists():
        if marker is None or marker.get("generator") != "reidkit.synthetic":
            if any(root.iterdir()):
                raise ReIDError(f"synthetic: {root} exists and is not a reidkit synthetic set; choose another output folder")
        elif marker.get("params") == params and not force:
            return GenerationReport(root, marker["counts"], params, True, marker=marker)
        elif not force:
            # Never replace a set the user generated without being asked to.
            have = marker.get("params") or {}
            differ = {k: v for k, v in params.items() if have.get(k) != v}
            raise ReIDError(
                f"synthetic: {root} already holds a set generated with "
                f"{ {k: have.get(k) for k in params} }; the requested "
                f"{', '.join(f'{k}={v!r}' for k, v in differ.items())} differ(s); choose another output "
                f"folder, or replace it with --regenerate (force=True)"
            )
    dom = DOMAINS[domain]
    jobs, counts = _plan(int(ids), int(images_per_id), int(cams), int(seed), dom, nd, nj)
    n_workers = max(1, int(workers if workers is not None else (os.cpu_count() or 1)))
    # Write into a sibling temp folder and rename at the end: an interrupted run leaves no
    # half tree that a loader could mistake for a finished one.
    _remove_stale_partials(out)
    tmp = out / f".{MARKET_DIR}.partial-{os.getpid()}"  # per process: concurrent callers don't collide
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        for s in SPLITS:
            (tmp / s).mkdir(parents=True)
    except OSError as exc:
        raise ReIDError(f"synthetic: cannot write into {out}: {exc.strerror or exc}") from None
    t0 = time.perf_counter()
    chunk = max(1, min(32, math.ceil(len(jobs) / (4 * n_workers))))  # small sets still spread over workers
    tasks = [(jobs[i:i + chunk], int(seed), dom, (h, w), str(tmp)) for i in range(0, len(jobs), chunk)]
    if n_workers == 1 or len(tasks) == 1:
        for t in tasks:
            _render_chunk(t)
    else:
        # fork avoids re-importing the caller's __main__; the workers only use numpy and PIL
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(min(n_workers, len(tasks))) as pool:
            for _ in pool.imap_unordered(_render_chunk, tasks):
                pass
    seconds = time.perf_counter() - t0
    ips = len(jobs) / max(seconds, 1e-9)
    marker = {"generator": "reidkit.synthetic", "format": "market1501", "params": params, "counts": counts,
              "seconds": round(seconds, 3), "images_per_s": round(ips, 1), "workers": n_workers}
    (tmp / MARKER_NAME).write_text(json.dumps(marker, indent=2, sort_keys=True))
    current = read_marker(root)
    if current is not None and current.get("params") == params:  # another process finished first
        shutil.rmtree(tmp)
        return GenerationReport(root, current["counts"], params, True, marker=current)
    if root.exists():
        shutil.rmtree(root)  # an older synthetic set with other parameters (checked above)
    os.replace(tmp, root)
    return GenerationReport(root, counts, params, False, seconds, ips, n_workers, marker)


def _remove_stale_partials(out: Path) -> None:
    """Delete temp trees left by generator processes that no longer run (killed runs)."""
    if not out.is_dir():
        return
    for p in out.glob(f".{MARKET_DIR}.partial-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)
            alive = pid != os.getpid()
        except (ValueError, ProcessLookupError):
            alive = False
        except PermissionError:
            alive = True
        if not alive:
            shutil.rmtree(p, ignore_errors=True)


def generate(out: str | os.PathLike, ids: int = 100, images_per_id: int = 16, cams: int = 6, seed: int = 0,
             domain: str = "A", size: tuple[int, int] = (128, 64), workers: int | None = None,
             distractors: int | None = None, junk: int | None = None, force: bool = False) -> Path:
    """Write a synthetic Market-1501 tree under `out`; returns `<out>/Market-1501-v15.09.15`."""
    return generate_report(out, ids=ids, images_per_id=images_per_id, cams=cams, seed=seed, domain=domain,
                           size=size, workers=workers, distractors=distractors, junk=junk, force=force).root
