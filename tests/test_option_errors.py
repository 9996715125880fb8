"""Library errors name the Python parameter; the CLI prints the flag of the verb that was run."""

import ast
import re
from pathlib import Path

import pytest

import reidkit
from reidkit.cli import _message, build_parser
from reidkit.errors import OptionError, ReIDError

PKG = Path(reidkit.__file__).parent
CLI_FILES = {"cli.py"}  # with reidkit/commands: the only modules that speak of flags


_FLAG = re.compile(r"--[a-z]")


class _Param(str):
    """A parameter of the enclosing function reaching a message (its value is the caller's)."""


def _heads(node, env, params, whole=False):
    """What a message expression can begin with (``whole``: every piece): string constants, or _Param markers;
    names are followed to what they were bound to, f-strings to their first piece, ``a + b`` to ``a``."""
    out = set()
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        out.add(node.value)
    elif isinstance(node, ast.JoinedStr):
        for v in node.values if whole else node.values[:1]:
            out |= _heads(v.value if isinstance(v, ast.FormattedValue) else v, env, params, whole)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mod)):
        out |= _heads(node.left, env, params, whole)
        if whole:
            out |= _heads(node.right, env, params, whole)
    elif isinstance(node, ast.IfExp):
        out |= _heads(node.body, env, params, whole) | _heads(node.orelse, env, params, whole)
    elif isinstance(node, ast.BoolOp):
        for v in node.values:
            out |= _heads(v, env, params, whole)
    elif isinstance(node, ast.Name):
        out |= env.get(node.id, set())
        if node.id in params:
            out.add(_Param(node.id))
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("join", "format"):
        out |= _heads(node.func.value, env, params, whole)
    return out


def _params(fn):
    names = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def _bind(target, value, env, params):
    """name = value, and a, b = (x, y) / for a, b in ((x, y), ...) element-wise."""
    if isinstance(target, ast.Name):
        env.setdefault(target.id, set()).update(_heads(value, env, params))
    elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(value, (ast.Tuple, ast.List)):
        for t, v in zip(target.elts, value.elts):
            _bind(t, v, env, params)


def _env(fn, params):
    """Names bound to strings in one function (or module): assignments, defaults, for-loops over literal tuples."""
    env = {}
    if not isinstance(fn, ast.Module):
        args = fn.args.posonlyargs + fn.args.args
        for a, d in zip(args[len(args) - len(fn.args.defaults) :], fn.args.defaults):
            env.setdefault(a.arg, set()).update(_heads(d, env, params))
        for a, d in zip(fn.args.kwonlyargs, fn.args.kw_defaults):
            if d is not None:
                env.setdefault(a.arg, set()).update(_heads(d, env, params))
    for _ in range(2):  # a name bound to a name bound to a string
        for node in ast.walk(fn):
            if isinstance(node, ast.Assign):
                for t in node.targets:
                    _bind(t, node.value, env, params)
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and node.value is not None:
                _bind(node.target, node.value, env, params)
            elif isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.iter, (ast.Tuple, ast.List)):
                for item in node.iter.elts:
                    _bind(node.target, item, env, params)
    return env


def _name(func):
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""


def flag_offenders(files, whole=False):
    """(file:line, what) of library calls whose error message can begin with a CLI flag: raised directly, or
    passed (also through names and other functions' parameters) into a function whose parameter begins one."""
    trees = {rel: ast.parse(text) for rel, text in files.items()}
    scopes = []  # (rel, node, the name callers call it by, params, env)
    sigs = {}  # function or class name -> parameter names (a class: its __init__'s)
    for rel, tree in trees.items():
        scopes.append((rel, tree, None, [], _env(tree, [])))
        inits = {
            item: node.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef)
            for item in node.body
            if isinstance(item, ast.FunctionDef) and item.name == "__init__"
        }
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                ps, name = _params(node), inits.get(node, node.name)
                scopes.append((rel, node, name, ps, _env(node, ps)))
                sigs.setdefault(name, ps)
    tainted = {}  # function name -> its parameters that begin an error message
    offenders = set()
    for _ in range(6):  # to a fixed point: a flag handed through several functions
        before = sum(len(v) for v in tainted.values())
        for rel, fn, own, params, env in scopes:
            for call in ast.walk(fn):
                if not isinstance(call, ast.Call):
                    continue
                callee = _name(call.func)
                if callee.endswith(("Error", "NotFound", "UnknownName")):
                    args = call.args[:2] + [k.value for k in call.keywords if k.arg in ("message", "msg")]
                    why = callee
                else:
                    ps = sigs.get(callee, [])
                    args = [
                        a
                        for p in tainted.get(callee, ())
                        for i, a in enumerate(call.args)
                        if i < len(ps) and ps[i] == p
                    ] + [k.value for k in call.keywords if k.arg in tainted.get(callee, ())]
                    why = f"{callee}()"
                for arg in args:
                    for h in _heads(arg, env, params, whole):
                        if isinstance(h, _Param):
                            if own:
                                tainted.setdefault(own, set()).add(str(h))
                        elif _FLAG.search(h) if whole else _FLAG.match(h):
                            offenders.add((f"{rel}:{call.lineno}", why, h[:40]))
        if sum(len(v) for v in tainted.values()) == before:
            break
    return sorted(offenders)


def _library_files() -> dict[str, str]:
    files = {}
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(PKG)
        if rel.parts[0] != "commands" and rel.name not in CLI_FILES:
            files[str(rel)] = path.read_text()
    return files


def test_no_library_error_message_starts_with_a_flag():
    """No error raised by the library can begin with a flag (``--x``): neither written in the raise nor reaching
    it through a name, an f-string, a concatenation or another function's parameter (``check_hw(size, "--size")``)."""
    offenders = flag_offenders(_library_files())
    assert not offenders, offenders


@pytest.mark.parametrize(
    "code, found",
    [
        ('raise ReIDError("--db: no gallery")', True),
        ('raise ReIDError(f"--db {db}: no gallery")', True),
        ('raise OptionError("db", "no gallery")', False),
        ('raise ReIDError("a --db mid-sentence is not a head")', False),
        # names bound to strings, concatenations, f-strings that begin with a name
        ('flag = "--db"\nraise ReIDError(flag + ": no gallery")', True),
        ('flag = "--db"\nwhat = flag\nraise ReIDError(f"{what}: no gallery")', True),
        ('flag = "--db" if x else "--gallery"\nraise ReIDError(flag)', True),
        ('for name, v in (("--nlist", n), ("--nprobe", p)):\n    raise ReIDError(f"{name}: {v}")', True),
        ('for name, v in (("nlist", n), ("nprobe", p)):\n    raise OptionError(name, f"{v}")', False),
        # a flag handed to a function whose parameter begins its error, through one more function
        ('def check(what, v):\n    raise ReIDError(f"{what}: bad {v}")\ncheck("--size", 3)', True),
        ('def check(what, v):\n    raise ReIDError(f"{what}: bad {v}")\ncheck("size", 3)', False),
        (
            'def check(what, v):\n    raise ReIDError(f"{what}: bad")\n'
            'def outer(flag):\n    check(flag, 1)\nouter(flag="--size")',
            True,
        ),
        ('def check(v, what="--host"):\n    raise ReIDError(what + ": bad")', True),
        ('class R:\n    def __init__(self, kind, key):\n        raise UnknownName(f"{key}: x")\nR("a", "--k")', True),
    ],
)
def test_the_flag_check_follows_names_and_calls(code, found):
    assert bool(flag_offenders({"m.py": code})) == found, code


def test_the_library_names_its_parameter():
    from reidkit.retrieval.ann import make_faiss_index
    from reidkit.retrieval.uploads import PixelBudget

    with pytest.raises(OptionError) as err:
        make_faiss_index("nope", 8)
    assert str(err.value).startswith("kind: expected one of") and "--" not in str(err.value)
    with pytest.raises(OptionError, match=r"^capacity: must be >= 1, got 0$"):
        PixelBudget(0)


@pytest.mark.parametrize(
    "argv, exc, printed",
    [
        (
            ["serve", "--db", "g"],
            OptionError("capacity", "must be >= 1, got 0"),
            "--max-pixels-in-flight: must be >= 1, got 0",
        ),
        (["serve", "--db", "g"], OptionError("db", "g is not a gallery"), "--db: g is not a gallery"),
        (
            ["index", "build", "--db", "g", "--images", "i"],
            OptionError("nlist", "more lists than images", value=9),
            "--nlist 9: more lists than images",
        ),
        (["index", "build", "--db", "g", "--images", "i"], OptionError("kind", "bad"), "--index: bad"),
        (
            ["extract", "--weights", "w", "--images", "i", "--out", "o.npz"],
            OptionError("fmt", "an exported model", value="fastreid"),
            "--from fastreid: an exported model",
        ),
        (
            ["eval-tracks", "--gt", "a", "--pred", "b"],
            OptionError("gt_dir", "a is not a folder"),
            "--gt: a is not a folder",
        ),
        (["video", "--db", "g", "v.mp4"], OptionError("cameras", "give one per video"), "--camera: give one per video"),
        (["video", "--db", "g", "v.mp4"], OptionError("start_times", "x"), "--start-time: x"),
        (["video", "--db", "g", "v.mp4"], OptionError("detector_options", "x"), "--detector-option: x"),
        # a parameter the verb has no flag for keeps the library's words; a plain ReIDError is printed as is
        (["serve", "--db", "g"], OptionError("nlist", "x", value=3), "nlist=3: x"),
        (["serve", "--db", "g"], ReIDError("plain"), "plain"),
    ],
)
def test_the_cli_prints_the_flag_of_the_verb(argv, exc, printed):
    parser = build_parser()
    assert _message(exc, parser, parser.parse_args(argv)) == printed
