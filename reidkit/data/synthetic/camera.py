"""Camera style: per-camera colour cast, exposure, blur, noise, JPEG quality, backgrounds and the photometric pipeline."""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from reidkit.data.synthetic.identity import (  # noqa: F401
    _CLOTH,
    _T_CAMERA,
    colour,
    keyed_rng,
)


@lru_cache(maxsize=64)
def camera_style(seed: int, dom: int, cam: int) -> dict:
    """Photometric and background style of one camera; domain B is a different family.

    Keys: bg (background kind), gain, cast (RGB), gamma, offset, blur, res (resolution factor), noise, jpeg
    (quality), views (probabilities of front/back/left/right), seed (of its background).
    """
    r = keyed_rng(seed, dom, _T_CAMERA, cam)
    rot = int(keyed_rng(seed, dom, _T_CAMERA, 1000).integers(3))  # every background style gets used
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
    img = Image.fromarray(coarse, mode="F").resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(img)


def _make_background(style: str, h: int, w: int, r: np.random.Generator) -> Image.Image:
    """One wide background strip per camera; images crop it at random offsets."""
    img = Image.new("RGB", (w, h))
    d = ImageDraw.Draw(img)
    hz = int(h * r.uniform(0.5, 0.62))  # where the wall / vegetation meets the ground
    pick = lambda choices: np.array(choices[int(r.integers(len(choices)))], dtype=np.float32)  # noqa: E731
    if style in ("street", "plaza", "mall", "indoor"):
        wall = pick(
            {
                "street": [(170, 96, 80), (200, 190, 170), (150, 150, 152), (222, 214, 190)],
                "plaza": [(190, 200, 210), (210, 205, 195), (120, 130, 140)],
                "mall": [(230, 225, 215), (60, 60, 70), (200, 170, 130)],
                "indoor": [(215, 220, 210), (180, 200, 210), (225, 210, 180), (120, 150, 130)],
            }[style]
        )
        d.rectangle((0, 0, w, hz), fill=colour(wall))
        if style == "street":  # brick courses and windows
            step = int(r.integers(6, 10))
            for y in range(0, hz, step):
                d.line((0, y, w, y), fill=colour(wall * 0.82), width=1)
            x = int(r.integers(0, 40))
            while x < w:
                ww, wh = int(r.integers(30, 60)), int(r.integers(30, 70))
                y0 = int(r.integers(5, max(6, hz - wh - 5)))
                d.rectangle(
                    (x, y0, x + ww, y0 + wh), fill=colour(r.uniform(40, 90, 3)), outline=colour(wall * 0.6), width=3
                )
                x += ww + int(r.integers(25, 90))
        elif style == "plaza":  # distant buildings and sky
            d.rectangle((0, 0, w, hz // 3), fill=colour((180, 200, 225)))
            x = 0
            while x < w:
                bw = int(r.integers(40, 120))
                top = int(r.integers(hz // 6, hz // 2))
                d.rectangle((x, top, x + bw, hz), fill=colour(wall * r.uniform(0.6, 1.1)))
                x += bw
        else:  # shop fronts / posters / panels
            x = int(r.integers(0, 30))
            while x < w:
                pw, ph = int(r.integers(30, 110)), int(r.integers(hz // 3, hz))
                poster = _CLOTH[r.integers(len(_CLOTH))] if r.random() < 0.6 else np.array((150, 180, 200))
                d.rectangle(
                    (x, hz - ph, x + pw, hz - 4),
                    fill=colour(poster * r.uniform(0.7, 1.1)),
                    outline=colour(wall * 0.5),
                    width=2,
                )
                if style == "mall":
                    d.rectangle((x + 4, hz - ph - 14, x + pw - 4, hz - ph - 4), fill=colour(r.uniform(30, 250, 3)))
                x += pw + int(r.integers(5, 60))
            if style == "indoor":
                for x in range(int(r.integers(20, 60)), w, int(r.integers(80, 160))):
                    d.ellipse((x, 2, x + 40, 12), fill=(250, 250, 240))
        ground = pick([(150, 148, 144), (120, 118, 116), (176, 166, 150), (96, 96, 100)])
        d.rectangle((0, hz, w, h), fill=colour(ground))
        tile = int(r.integers(14, 34))
        lines = colour(ground * 0.8)
        for y in range(hz, h, tile // 2 + 2):
            d.line((0, y, w, y), fill=lines, width=1)
        for x in range(0, w, tile):
            d.line((x, hz, x + (x - w / 2) * 0.15, h), fill=lines, width=1)
        if style == "indoor" and r.random() < 0.6:  # checkered floor
            dark = colour(ground * 0.65)
            for i, y in enumerate(range(hz, h, tile)):
                for x in range((i % 2) * tile, w, 2 * tile):
                    d.rectangle((x, y, x + tile, y + tile), fill=dark)
    elif style == "park":
        d.rectangle((0, 0, w, hz), fill=colour(pick([(170, 200, 225), (200, 205, 210), (150, 175, 200)])))
        for _ in range(w // 18):
            cx, cy, rad = r.uniform(0, w), r.uniform(0, hz * 0.9), r.uniform(15, 45)
            d.ellipse(
                (cx - rad, cy - rad, cx + rad, cy + rad), fill=colour(r.uniform(0.6, 1.2) * np.array((60, 110, 50)))
            )
        for x in range(int(r.integers(0, 50)), w, int(r.integers(60, 140))):
            d.rectangle((x, hz * 0.45, x + 6, hz), fill=(80, 60, 40))
        grass = pick([(90, 140, 70), (110, 150, 80), (190, 175, 140)])
        d.rectangle((0, hz, w, h), fill=colour(grass))
        d.rectangle((0, hz + (h - hz) * 0.3, w, h), fill=colour(pick([(176, 160, 130), (150, 150, 150)])))
    else:  # night street: dark wall, lamp glows, wet road
        d.rectangle((0, 0, w, hz), fill=colour(r.uniform(20, 50, 3)))
        for x in range(int(r.integers(0, 40)), w, int(r.integers(50, 120))):
            y0 = int(r.integers(5, hz - 30))
            d.rectangle((x, y0, x + 25, y0 + 20), fill=colour(r.uniform(150, 240) * np.array((1.0, 0.85, 0.5))))
        d.rectangle((0, hz, w, h), fill=colour(r.uniform(35, 60, 3)))
        for x in range(int(r.integers(0, 50)), w, int(r.integers(70, 150))):
            d.rectangle((x, hz - int(r.integers(20, 50)), x + 3, h), fill=(70, 70, 60))
    # clutter: benches, bins, bollards
    for _ in range(int(r.integers(1, 4)) * w // 300):
        ox, ow, oh = r.uniform(0, w), r.uniform(10, 40), r.uniform(10, 35)
        d.rectangle((ox, hz + 4 - oh, ox + ow, hz + 4), fill=colour(r.uniform(30, 160, 3)))
    arr = np.asarray(img, dtype=np.float32)
    # Real scenes behind pedestrians are mostly muted (pavement, walls); saturated, contrasty
    # backgrounds would dominate pixel distances more than the people do.
    grey = arr.mean(axis=2, keepdims=True)
    arr = grey + (arr - grey) * 0.5
    arr = arr.mean() + (arr - arr.mean()) * 0.6
    arr = arr + _noise_tex(r, h, w, 12, 10.0)[..., None] + r.normal(0, 3, arr.shape).astype(np.float32)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.8))


@lru_cache(maxsize=32)
def camera_background(seed: int, dom: int, cam: int, h: int, w: int) -> Image.Image:
    """The background of camera ``cam`` (its style's street, park, plaza, indoor, mall or night), h x w.

    Cached and shared: crop it or ``copy()`` it before drawing on it.
    """
    cs = camera_style(seed, dom, cam)
    return _make_background(cs["bg"], h, w, np.random.default_rng(cs["seed"]))


def photometric(img: Image.Image, cs: dict, r: np.random.Generator) -> Image.Image:
    """Camera pipeline: resolution drop, blur, exposure, colour cast, gamma, noise."""
    W, H = img.size
    f = min(1.0, cs["res"] * r.uniform(0.85, 1.15))
    if f < 0.97:
        img = img.resize((max(8, int(W * f)), max(8, int(H * f))), Image.Resampling.BILINEAR).resize(
            (W, H), Image.Resampling.BILINEAR
        )
    blur = cs["blur"] * r.uniform(0.7, 1.3)
    if blur > 0.15:
        img = img.filter(ImageFilter.GaussianBlur(blur))
    arr = np.asarray(img, dtype=np.float32) / 255.0
    gain = cs["gain"] * math.exp(r.normal(0, 0.1))
    cast = cs["cast"] * (1 + r.normal(0, 0.025, 3))
    arr = np.power(arr, cs["gamma"]) * (gain * cast)[None, None, :]
    arr = arr * 255.0 + cs["offset"] + r.normal(0, cs["noise"], arr.shape)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8))
