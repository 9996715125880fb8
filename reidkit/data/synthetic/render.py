"""The renderer: one crop of an identity (view, phase, box jitter, camera) and the worker that writes jobs."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from reidkit.data.synthetic.identity import (  # noqa: F401
    _SS,
    _T_IMAGE,
    _VIEWS,
    sample_identity,
    keyed_rng,
)
from reidkit.data.synthetic.camera import (  # noqa: F401
    camera_background,
    camera_style,
    photometric,
)
from reidkit.data.synthetic.painter import (  # noqa: F401
    _occluder,
    _silhouette,
    draw_person,
)


@dataclass(frozen=True)
class Job:
    """One file of a generated set: where it goes, whom it shows (key, image index), the camera and the kind."""

    path: str
    key: int  # identity key (pid, or distractor/junk key)
    idx: int  # image index within the key, part of the image seed
    cam: int  # 0-based
    kind: str  # "person" | "distractor" | "background" | "junk"
    view: int  # dominant view index for this (person, camera)


def render_crop(job: Job, seed: int, dom: int, size: tuple[int, int]) -> Image.Image:
    """Render one detection crop (final size, before JPEG)."""
    H, W = size
    r = keyed_rng(seed, dom, _T_IMAGE, job.key, job.idx)
    cs = camera_style(seed, dom, job.cam)
    hs, ws = int(_SS * H * 1.45), int(_SS * W * 2.3)
    bg = camera_background(seed, dom, job.cam, hs, ws * 4)
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
        idt = sample_identity(seed, dom, key)
        probs = np.full(4, 0.25 / 3)
        probs[job.view] = 0.75
        view = _VIEWS[int(r.choice(4, p=probs))]
        # contact shadow under the feet
        sx0, sy0, sx1, sy1 = int(cx - 1.4 * u), int(feet - 0.4 * u), int(cx + 1.4 * u), min(hs, int(feet + 0.4 * u))
        patch = np.asarray(scene.crop((sx0, sy0, sx1, sy1)), dtype=np.float32)
        yy, xx = np.ogrid[sy0:sy1, sx0:sx1]
        patch[((xx - cx) / (1.3 * u)) ** 2 + ((yy - feet) / (0.3 * u)) ** 2 < 1] *= 0.7
        scene.paste(Image.fromarray(patch.astype(np.uint8)), (sx0, sy0))
        draw_person(
            scene,
            idt,
            view,
            float(r.uniform(0, 2 * math.pi)),
            cx + r.normal(0, 0.02) * ws,
            feet,
            height,
            float(r.uniform(-1, 1)),
        )
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
    img = scene.resize((W, H), Image.Resampling.BILINEAR, box=(box[0], box[1], box[2], box[3]))
    return photometric(img, cs, r)


def _render_chunk(args: tuple) -> int:
    """Worker: render and write a list of jobs."""
    jobs, seed, dom, size, root = args
    for job in jobs:
        img = render_crop(job, seed, dom, size)
        cs = camera_style(seed, dom, job.cam)
        q = int(np.clip(cs["jpeg"] + (job.idx * 7 + job.key) % 9 - 4, 30, 98))
        img.save(os.path.join(root, job.path), "JPEG", quality=q)
    return len(jobs)
