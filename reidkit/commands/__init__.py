"""The CLI verbs, one module per area; shared argument helpers."""
from __future__ import annotations

import argparse

# Other toolkits' checkpoint layouts (reidkit.models.interop.FORMATS), kept here so `--help` stays fast.
FOREIGN_FORMATS = ("fastreid", "torchreid", "strong_baseline", "transreid", "solider")


def add_from_argument(parser: argparse.ArgumentParser) -> None:
    """``--from FORMAT``: read --weights as another toolkit's checkpoint (default: detected from its keys)."""
    parser.add_argument("--from", dest="weights_format", choices=FOREIGN_FORMATS, default=None,
                        help="the layout of --weights when it is another toolkit's checkpoint (default: "
                             "reidkit's, or detected from the keys)")
