"""mkdocs hooks (mkdocs.yml `hooks:`): checks that make `mkdocs build --strict` fail.

- Every object an API page renders (`::: dotted.path`) has a docstring, and so does each public
  function, method and property of a class rendered there, and each public function or class of a
  module rendered with its members. mkdocstrings would silently leave an undocumented one out.
- The API pages render every name of PUBLIC_API.
- docs/architecture.md lists exactly the import contracts of pyproject.toml (tools/architecture_doc.py).

The guide pages link to files of the repository outside docs/ (benchmark tables, READMEs) as `../path`,
which works when the pages are read on the forge; on the site such a link becomes the file's path in
code (`repo_path_links`), and a link to a repository file that does not exist is a warning.

Each finding is a warning on mkdocs' logger; `--strict` (and `strict: true` in mkdocs.yml) turns any
warning into a failed build.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("mkdocs.hooks.reidkit")

# the public API of reidkit/__init__.py that the reference must show (its modules are shown too)
PUBLIC_API = ["train", "train_usl", "evaluate", "load_dataset", "load_model", "FeatureExtractor", "Embedder", "Gallery"]
_DIRECTIVE = re.compile(r"^:::\s+(\S+)\s*\n((?:[ \t]+.*\n?)*)", re.M)
_rendered: set[str] = set()
_package = None


def _griffe_package():
    global _package
    if _package is None:
        import griffe

        _package = griffe.load("reidkit", search_paths=[str(ROOT)], resolve_aliases=False)
    return _package


def _target(obj):
    return obj.final_target if obj.is_alias else obj


def undocumented(path: str, with_members: bool = True) -> list[str]:
    """The dotted names under `path` that the reference would show without a docstring."""
    obj = _target(_griffe_package()[path.removeprefix("reidkit.")])
    missing = [] if obj.docstring else [path]
    if not with_members:
        return missing
    for name, member in obj.members.items():
        if name.startswith("_"):
            continue
        if obj.is_module and (member.is_alias or member.kind.value not in ("function", "class")):
            continue  # a module shows what it defines; names it imports are documented where they live
        member = _target(member)
        if member.kind.value == "function" or "property" in member.labels:
            if not member.docstring:
                missing.append(f"{path}.{name}")
        elif member.kind.value == "class" and not member.docstring:
            missing.append(f"{path}.{name}")
    return missing


_REPO_LINK = re.compile(r"\[([^\]]+)\]\(\.\./([^)#\s]+)(#[^)\s]*)?\)")


def repo_path_links(markdown: str, page_uri: str) -> str:
    """`[text](../path)` (a repository file outside docs/) as text and the path in code; a missing file warns."""

    def repl(m: re.Match) -> str:
        text, path = m.group(1), m.group(2)
        if not (ROOT / path).exists():
            log.warning(f"{page_uri}: link to {path}, which is not a file of the repository")
        code = f"`{path}`"
        return code if text.strip("`") == path else f"{text} ({code})"

    return _REPO_LINK.sub(repl, markdown)


def on_page_markdown(markdown: str, page, config, files):
    if not page.file.src_uri.startswith("api/"):
        return repo_path_links(markdown, page.file.src_uri)
    for match in _DIRECTIVE.finditer(markdown):
        path, options = match.group(1), match.group(2)
        _rendered.add(path.rsplit(".", 1)[-1])
        for name in undocumented(path, with_members="members: false" not in options):
            log.warning(
                f"{page.file.src_uri}: {name} has no docstring (every public object the API reference shows needs one)"
            )
    return markdown


def on_post_build(config):
    missing = [name for name in PUBLIC_API if name not in _rendered]
    if missing:
        log.warning(f"the API reference does not show the public name(s) {missing} (docs/api/*.md)")
    spec = importlib.util.spec_from_file_location("_architecture_doc", ROOT / "tools" / "architecture_doc.py")
    doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc)
    diff = doc.check()
    if diff:
        log.warning(
            "docs/architecture.md does not list the import contracts of pyproject.toml "
            f"(python tools/architecture_doc.py --write):\n{diff}"
        )
    _rendered.clear()
