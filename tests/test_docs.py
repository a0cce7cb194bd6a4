"""The docs' code runs: every ```python block of docs/**/*.md is executed, each page's blocks in order in
one namespace (a page is one script), in a fresh temporary directory. A block may be left out only
with a reason, in an HTML comment on the line before it: ``<!-- not run: downloads from the hub -->``."""

from __future__ import annotations

import ast
import linecache
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^(?P<indent>[ ]*)```(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=indent)```[ ]*$", re.M | re.S)
NOT_RUN = re.compile(r"<!--\s*not run:(?P<reason>.*?)-->\s*$")
#: blocks left out must stay rare: the guides run on the offline models instead
MAX_NOT_RUN = 6


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    code: str
    not_run: str | None  # the reason, when the block is left out


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        if match["info"].strip().split(" ")[0] != "python":
            continue
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        marker = NOT_RUN.search(before)
        indent = len(match["indent"])
        code = "\n".join(line[indent:] for line in match["body"].splitlines())
        line = text.count("\n", 0, match.start()) + 2  # the block's first line of code, 1-based
        found.append(Block(page, line, code, marker["reason"].strip() if marker else None))
    return found


PAGES = sorted(DOCS.rglob("*.md"))
RUNNABLE = [page for page in PAGES if any(b.not_run is None for b in blocks(page))]


def test_the_guides_have_runnable_examples():
    guides = sorted((DOCS / "guides").glob("*.md"))
    assert guides, "docs/guides/ has no pages"
    without = [g.name for g in guides if g not in RUNNABLE and g.name != "benchmarks.md"]
    assert without == [], f"guides without a runnable python block: {without}"


def test_blocks_left_out_say_why_and_stay_rare():
    left_out = [b for page in PAGES for b in blocks(page) if b.not_run is not None]
    assert all(b.not_run for b in left_out), [f"{b.page.name}:{b.line}" for b in left_out if not b.not_run]
    assert len(left_out) <= MAX_NOT_RUN, [f"{b.page.name}:{b.line} ({b.not_run})" for b in left_out]


def test_markers_sit_right_before_a_python_block():
    # a marker anywhere else would silently leave nothing out (or the wrong block)
    for page in PAGES:
        text = page.read_text()
        markers = len(re.findall(r"<!--\s*not run:", text))
        assert markers == sum(b.not_run is not None for b in blocks(page)), page.name


def as_python(page: Path) -> list[str]:
    """The page with every line that is not in a run block blanked: what ``inspect.getsource`` and
    tracebacks read for code defined in the page (the prose around it is not Python)."""
    lines = [""] * (page.read_text(encoding="utf-8").count("\n") + 1)
    for block in blocks(page):
        if block.not_run is None:
            for offset, line in enumerate(block.code.splitlines()):
                lines[block.line - 1 + offset] = line
    return [line + "\n" for line in lines]


@pytest.mark.parametrize("page", RUNNABLE, ids=[str(p.relative_to(DOCS)) for p in RUNNABLE])
def test_page_runs(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    source = as_python(page)
    monkeypatch.setitem(linecache.cache, str(page), (sum(map(len, source)), None, source, str(page)))
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem}"}
    for block in blocks(page):
        if block.not_run is None:
            # numbered as in the page, so that a traceback shows the page's own lines
            tree = ast.increment_lineno(ast.parse(block.code, str(page)), block.line - 1)
            exec(compile(tree, str(page), "exec"), namespace)
