"""The docs site's own checks (tools/mkdocs_hooks.py) and the README's links into it."""

import importlib.util
import logging
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _hooks():
    spec = importlib.util.spec_from_file_location("_mkdocs_hooks", ROOT / "tools" / "mkdocs_hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_repository_links_become_paths_and_a_missing_file_warns(caplog):
    hooks = _hooks()
    md = (
        "see [table](../benchmarks/results/million.md) and [`benchmarks/README.md`](../benchmarks/README.md), "
        "[the page](gallery.md)"
    )
    out = hooks.repo_path_links(md, "x.md")
    assert out == ("see table (`benchmarks/results/million.md`) and `benchmarks/README.md`, [the page](gallery.md)")
    with caplog.at_level(logging.WARNING):
        hooks.repo_path_links("[x](../benchmarks/results/nope.md)", "y.md")
    assert "y.md: link to benchmarks/results/nope.md" in caplog.text


def _nav_files(nav):
    for item in nav:
        if isinstance(item, str):
            yield item
        else:
            for value in item.values():
                yield from ([value] if isinstance(value, str) else _nav_files(value))


def test_every_guide_page_is_in_the_nav_and_every_readme_link_resolves():
    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)  # mkdocs' !!python tags
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    in_nav = set(_nav_files(config["nav"]))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages == in_nav, (
        f"pages not in the nav: {sorted(pages - in_nav)}; nav without a page: {sorted(in_nav - pages)}"
    )
    readme = (ROOT / "README.md").read_text()
    targets = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    assert any(t.startswith("docs/") for t in targets)
    missing = [t for t in targets if not t.startswith("http") and not (ROOT / t).exists()]
    assert not missing, f"README links to files that do not exist: {missing}"
