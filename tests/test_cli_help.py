"""What a newcomer reads first (issue 31): every option's default in --help, whole recipe descriptions."""

from __future__ import annotations

import re

import pytest

from reidkit.cli import build_parser


def _sub(parser, *path):
    for name in path:
        parser = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[name]
    return parser


@pytest.mark.parametrize(
    "verb,flag,default",
    [
        (("extract",), "--batch-size", "256"),
        (("visrank",), "--topk", "10"),
        (("visrank",), "--max-queries", "100"),
        (("visrank",), "--metric", "cosine"),
        (("search",), "--topk", "20"),
        (("tracklets", "search"), "--topk", "10"),
    ],
)
def test_help_shows_the_default(verb, flag, default):
    text = " ".join(_sub(build_parser(), *verb).format_help().split())
    entry = text.split(f" {flag} ", 1)[1].split(" --", 1)[0]
    assert f"(default {default})" in entry, (verb, flag, entry)


def test_recipes_descriptions_are_whole_sentences(capsys):
    from reidkit.cli import main
    from reidkit.commands.train import recipe_summary

    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    entries = re.split(r"\n(?=\S)", out.strip())
    assert len(entries) > 10
    for entry in entries:
        name, about = entry.split(None, 1)
        about = " ".join(about.split())
        assert about.endswith("."), entry  # never cut mid-sentence (it was the first comment line)
    baseline = next(" ".join(e.split()[1:]) for e in entries if e.startswith("baseline_r50 "))
    assert baseline.endswith("no label smoothing, last stride 2, no BNNeck, no center loss.")
    assert (
        recipe_summary("# Luo et al., CVPRW 2019, ResNet-50. Paper: 94.5.\n# more\nx: 1\n")
        == "Luo et al., CVPRW 2019, ResNet-50."
    )
    assert recipe_summary("# runs over\n# two lines. Then more.\n") == "runs over two lines."
