"""The CLI verbs, one module per area; shared argument helpers."""

from __future__ import annotations

import argparse
from typing import Any

# Other toolkits' checkpoint layouts (reidkit.models.interop.FORMATS), kept here so `--help` stays fast.
FOREIGN_FORMATS = ("fastreid", "torchreid", "strong_baseline", "transreid", "solider")


def params(action: argparse.Action, *names: str) -> argparse.Action:
    """Mark ``action`` as the flag of the library parameters ``names``: an OptionError naming one of them
    (``capacity: must be >= 1``) is printed with this flag (``--max-pixels-in-flight: must be >= 1``)."""
    setattr(action, "params", names)  # read back by reidkit.cli (getattr(action, "params", ()))
    return action


def add_recipe_verb(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    func: Any,
    config_help: str,
    overrides_help: str,
    **parser: Any,
) -> argparse.ArgumentParser:
    """A verb that runs a recipe: ``--config/-c RECIPE`` and dotted ``overrides``; ``parser``: add_parser's
    keyword arguments (help, description, aliases)."""
    p = sub.add_parser(name, **parser)
    p.add_argument("--config", "-c", required=True, help=config_help)
    p.add_argument("overrides", nargs="*", help=overrides_help)
    p.set_defaults(func=func)
    return p


def add_engine_argument(parser: argparse.ArgumentParser, default: str | None = "torch") -> None:
    """``--engine``: how a verb that embeds images runs the model (``default`` None: as the gallery's
    features were made)."""
    first = "torch (BatchNorm folded; default)" if default == "torch" else "torch (BatchNorm folded)"
    tail = (
        ""
        if default == "torch"
        else "; default: as the gallery's features were made (int8 for footage ingested in int8), else torch"
    )
    parser.add_argument(
        "--engine",
        choices=["torch", "onnx", "auto", "int8"],
        default=default,
        help=f"{first}, onnx (onnxruntime on the CPU, about 2x faster there: "
        "benchmarks/bench_embed.py; the export is cached by the weights' hash under "
        "$REIDKIT_HOME/onnx-cache, features equal to torch within 1e-4), auto (onnx on a CPU) "
        f"or int8 (quantised, features at cosine ~0.97 to float){tail}",
    )


def add_from_argument(parser: argparse.ArgumentParser) -> None:
    """``--from FORMAT``: read --weights as another toolkit's checkpoint (default: detected from its keys)."""
    params(
        parser.add_argument(
            "--from",
            dest="weights_format",
            choices=FOREIGN_FORMATS,
            default=None,
            help="the layout of --weights when it is another toolkit's checkpoint (default: "
            "reidkit's, or detected from the keys)",
        ),
        "fmt",
    )


def add_trust_argument(parser: argparse.ArgumentParser) -> None:
    """``--trust-checkpoint`` on a verb that loads weights; call after ``set_defaults(func=...)``.

    Checkpoints are read without running code (``reidkit.models.checkpoint``); the flag lets a file
    that needs more be fully unpickled, with a warning, for the duration of the verb only.
    """
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="fully unpickle a checkpoint that holds objects beyond tensors, numpy arrays and "
        "configs; this can run arbitrary code from the file: only for files you trust",
    )
    func = parser.get_default("func")
    if func is None:
        raise RuntimeError("add_trust_argument: set the parser's func first")

    def run(args: argparse.Namespace) -> Any:
        from reidkit.models.checkpoint import trusted

        with trusted(bool(getattr(args, "trust_checkpoint", False))):
            return func(args)

    # the inspect/functools convention (inspect.unwrap), not an attribute mypy knows functions have
    run.__wrapped__ = func  # type: ignore[attr-defined]
    parser.set_defaults(func=run)
