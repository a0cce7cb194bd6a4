"""Pages written in other branches (serving.md, migrating.md): listed in the nav and linked only when
present, so `mkdocs build --strict` passes before and after they are merged."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

OPTIONAL = ("serving.md", "migrating.md")


def _absent(config: Any) -> set[str]:
    return {name for name in OPTIONAL if not (Path(config["docs_dir"]) / name).exists()}


def _prune(nav: Any, absent: set[str]) -> Any:
    if isinstance(nav, list):
        return [kept for item in nav if (kept := _prune(item, absent)) is not None]
    if isinstance(nav, dict):
        pruned = {title: _prune(value, absent) for title, value in nav.items()}
        return {title: value for title, value in pruned.items() if value is not None} or None
    return None if nav in absent else nav


def on_config(config: Any) -> Any:
    absent = _absent(config)
    if absent and config["nav"]:
        config["nav"] = _prune(config["nav"], absent)
    return config


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    # a link to an absent optional page becomes its text: `[Migrating](../migrating.md)` -> `Migrating`
    for name in _absent(config):
        markdown = re.sub(r"\[([^\]]+)\]\((?:\.\./)*" + re.escape(name) + r"(#[^)]*)?\)", r"\1", markdown)
    return markdown
