"""Identity sampling: palettes, keyed random streams and the attributes of one person (body, clothes, colours)."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np


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
GROUP_SIZE = 3  # identities per hard-negative group (shared clothing colours)

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
        (28, 28, 32),
        (62, 62, 68),
        (126, 126, 132),
        (228, 228, 224),
        (32, 40, 82),
        (62, 86, 130),
        (44, 82, 172),
        (122, 170, 218),
        (172, 32, 38),
        (102, 28, 38),
        (226, 142, 172),
        (230, 122, 42),
        (226, 200, 62),
        (102, 106, 52),
        (42, 122, 62),
        (32, 120, 126),
        (202, 182, 142),
        (112, 76, 46),
        (102, 62, 132),
        (166, 152, 106),
    ],
    dtype=np.float32,
)
_CLOTH_P = np.array(
    [
        0.15,
        0.08,
        0.07,
        0.1,
        0.08,
        0.08,
        0.05,
        0.04,
        0.04,
        0.03,
        0.03,
        0.02,
        0.03,
        0.03,
        0.03,
        0.02,
        0.05,
        0.04,
        0.02,
        0.01,
    ]
)
_CLOTH_P = _CLOTH_P / _CLOTH_P.sum()
_SHOES = np.array(
    [(24, 24, 26), (236, 236, 232), (96, 64, 40), (120, 120, 124), (180, 40, 40), (40, 70, 160)], dtype=np.float32
)
_SHOES_P = np.array([0.38, 0.3, 0.12, 0.1, 0.05, 0.05])


def keyed_rng(*keys: int) -> np.random.Generator:
    """A generator keyed by integers (order matters), independent of any other key.

    The generator keys every stream by (seed, domain index, a tag, ...): identities use tag 11, groups 12,
    images 13, cameras 14, the plan 15 and data/scene.py 31-33; a generator of your own picks a tag of its
    own so its draws never coincide with these.
    """
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


def colour(c: Any) -> tuple[int, int, int]:
    """An RGB triple (array, floats) as the int tuple PIL fills with, each channel clipped to 0..255."""
    return (min(255, max(0, int(c[0]))), min(255, max(0, int(c[1]))), min(255, max(0, int(c[2]))))


def _jitter(r: np.random.Generator, c: np.ndarray, s: float) -> np.ndarray:
    return np.clip(c * (1 + r.normal(0, s, 3)) + r.normal(0, 4, 3), 0, 255)


# ----------------------------------------------------------------------------- identities
@lru_cache(maxsize=4096)
def sample_identity(seed: int, dom: int, key: int) -> dict:
    """All appearance attributes of one person (deterministic for the key; cached, do not modify).

    Keys 1.. are annotated identities: keys of one group ((key - 1) // GROUP_SIZE) share clothing colours and
    garment types (hard negatives). Keys from 1,000,000 are distractors and passers-by (no group).
    """
    r = keyed_rng(seed, dom, _T_IDENTITY, key)
    # Annotated identities share clothing colours and garment types with their group.
    g = keyed_rng(seed, dom, _T_GROUP, (key - 1) // GROUP_SIZE) if 1 <= key < _DISTRACTOR_KEY else r
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
        "upper_tex": str(
            r.choice(["plain", "hstripes", "vstripes", "checks", "dots"], p=[0.44, 0.2, 0.08, 0.16, 0.12])
        ),
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
        idt["front_print"] = (
            str(r.choice(["circle", "rect", "band"])),
            _CLOTH[r.integers(len(_CLOTH))],
            float(r.uniform(0.5, 1.0)),
        )
    if r.random() < 0.15:
        idt["back_print"] = (
            str(r.choice(["rect", "band"])),
            _CLOTH[r.integers(len(_CLOTH))],
            float(r.uniform(0.5, 1.0)),
        )
    if r.random() < 0.3:
        idt["backpack"] = (_CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)], float(r.uniform(0.85, 1.2)))
    if r.random() < 0.22:
        idt["bag"] = (int(r.choice([-1, 1])), _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)], float(r.uniform(0.8, 1.3)))
    if r.random() < 0.14:
        idt["hat"] = (str(r.choice(["cap", "beanie"])), _CLOTH[r.choice(len(_CLOTH), p=_CLOTH_P)])
    return idt
