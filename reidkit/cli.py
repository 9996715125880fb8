"""`reidkit <verb>`: a thin layer over the Python API.

Each verb lives in ``reidkit/commands/<area>.py`` as a ``register(subparsers)`` function that
adds its parser and sets ``func`` (called with the parsed namespace, returns an exit code or None).
Heavy imports stay inside the handlers so ``reidkit --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from reidkit.errors import OptionError, ReIDError

COMMAND_MODULES = (
    "data",
    "synth",
    "evaluation",
    "train",
    "cluster",
    "retrieval",
    "export",
    "video",
    "watch",
    "identities",
    "weights",
    "reproduce",
)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every available verb."""
    parser = argparse.ArgumentParser(prog="reidkit", description="Person re-identification toolkit.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    parser.add_argument(
        "--plugin",
        action="append",
        metavar="MODULE|FILE.py",
        help="import your own registered parts first (repeatable, anywhere on the line; "
        "also $REIDKIT_PLUGINS and the 'reidkit.plugins' entry points)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        metavar="N",
        help="threads for torch/OpenMP/faiss/OpenCV (default: the cores this process may use; "
        "see reidkit.utils.threads)",
    )
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name in COMMAND_MODULES:
        modname = f"reidkit.commands.{name}"
        if importlib.util.find_spec(modname) is None:
            continue
        importlib.import_module(modname).register(sub)
    return parser


def _verb_flags(parser: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, str]:
    """Parameter name -> flag for every option of the verb that was run (``db`` -> ``--db``).

    Walks the chosen sub-parsers (``index`` -> ``build``); a verb whose flag differs from the library's
    parameter name says so with ``reidkit.commands.params(action, "capacity")``.
    """
    flags: dict[str, str] = {}
    current: argparse.ArgumentParser | None = parser
    while current is not None:
        chosen = None
        for action in current._actions:
            longs = [o for o in action.option_strings if o.startswith("--")]
            if longs:
                flags.setdefault(action.dest, longs[0])
                flags.setdefault(longs[0][2:].replace("-", "_"), longs[0])
                for name in getattr(action, "params", ()):  # reidkit.commands.params
                    flags[name] = longs[0]
            if isinstance(action, argparse._SubParsersAction):
                chosen = action.choices.get(getattr(args, action.dest, None) or "")
        current = chosen
    return flags


def _message(exc: ReIDError, parser: argparse.ArgumentParser, args: argparse.Namespace | None) -> str:
    """The error as the CLI prints it: an OptionError names the verb's flag, not the Python parameter."""
    if isinstance(exc, OptionError) and args is not None:
        flag = _verb_flags(parser, args).get(exc.option)
        if flag:
            return exc.for_flag(flag)
    return str(exc)


def take_plugin_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(plug-ins, the other arguments) of a command line: ``--plugin X`` / ``--plugin=X`` anywhere in it."""
    plugins: list[str] = []
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--":
            rest.append(arg)
            rest.extend(it)
            break
        if arg == "--plugin":
            value = next(it, None)
            if value is None:
                raise ReIDError("--plugin needs a module name or a path to a .py file")
            plugins.append(value)
        elif arg.startswith("--plugin="):
            plugins.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return plugins, rest


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `reidkit` command."""
    from reidkit.plugins import load_plugins

    try:
        plugins, argv = take_plugin_args(list(sys.argv[1:] if argv is None else argv))
        load_plugins(plugins)  # before any verb: recipes and checkpoints may name the parts
    except ReIDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args = parser.parse_args(argv)  # type= checks (reidkit.commands._args) raise ReIDError naming the flag
    except ReIDError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.version:
        from reidkit import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        from reidkit.utils.threads import configure_threads

        configure_threads(args.threads)
        code = args.func(args)
    except ReIDError as exc:
        print(f"error: {_message(exc, parser, args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`reidkit search ... --json | head`): stop quietly, as cat does
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
