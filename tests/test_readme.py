"""The README's Python tour runs as written (in a temporary folder, on the CPU)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _tour() -> str:
    text = README.read_text()
    section = text[text.index("### Python") : text.index("### Command line")]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the tour is one python block"
    return blocks[0]


def test_python_tour_runs_verbatim(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    scope: dict = {"__name__": "__readme__"}
    exec(compile(_tour(), "README.md:python-tour", "exec"), scope)  # noqa: S102 - our own README
    # what the tour promises: a trained model that ranks a query's identity, and a gallery answer
    metrics = scope["result"]
    assert metrics, "reidkit.train returned no metrics"
    hits = scope["gallery"].search(scope["ds"].query[0].path, k=5)
    assert len(hits) == 5 and all({"id", "path", "score"} <= set(h) for h in hits)
    assert hits[0]["score"] >= hits[-1]["score"]
    assert (tmp_path / "runs" / "demo" / "model.pt").is_file()
