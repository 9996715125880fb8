"""Library errors name the Python parameter; the CLI prints the flag of the verb that was run."""

import ast
from pathlib import Path

import pytest

import reidkit
from reidkit.cli import _message, build_parser
from reidkit.errors import OptionError, ReIDError

PKG = Path(reidkit.__file__).parent
CLI_FILES = {"cli.py", "plugins.py"}  # plugins.py parses the command line's --plugin itself


def _literal_head(node: ast.AST) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
        return node.values[0].value
    return ""


def test_no_library_error_message_starts_with_a_flag():
    offenders = []
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG)
        if rel.parts[0] == "commands" or rel.name in CLI_FILES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "").endswith(("Error", "NotFound")):
                for arg in node.args[:2]:
                    if _literal_head(arg).startswith("--"):
                        offenders.append(f"{rel}:{node.lineno}")
    assert not offenders, offenders


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
