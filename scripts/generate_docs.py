"""Writes the reference tables of docs/ from the code that defines them, so a page cannot drift from the code.

    scripts/docs            # rewrite the generated parts of the pages
    scripts/docs --check    # exit 1 naming each stale page (the test suite runs the same check)

A generated part sits between `<!-- begin generated: NAME -->` and `<!-- end generated: NAME -->`; everything else
on a page is written by hand.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "infra"))  # the stack program's root: its package `stack` imports from there

from stack.config import reference  # noqa: E402

from app import metrics, settings  # noqa: E402

# page -> generated part -> what renders it
PAGES: dict[str, dict[str, Callable[[], str]]] = {
    "docs/server/configuration.md": {"server-settings": settings.describe},
    "docs/server/metrics.md": {"metrics": metrics.describe},
    "docs/deploy/configuration.md": {"stack-config": reference.describe},
}


def _part(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- begin generated: {re.escape(name)} [^\n]*-->\n)(.*?)(<!-- end generated: {re.escape(name)} -->)",
        re.DOTALL,
    )


def render(page: str, text: str) -> str:
    """`text` of `page` with each of its generated parts rendered afresh."""
    for name, generate in PAGES[page].items():
        pattern = _part(name)
        match = pattern.search(text)
        if match is None:
            raise SystemExit(f"docs: {page} has no generated part {name!r} (its begin/end markers are missing)")
        text = text[: match.start(2)] + generate().strip("\n") + "\n" + text[match.end(2) :]
    return text


def stale_pages() -> list[str]:
    return [page for page in PAGES if render(page, (ROOT / page).read_text()) != (ROOT / page).read_text()]


def main(argv: list[str]) -> int:
    if argv == ["--check"]:
        stale = stale_pages()
        for page in stale:
            print(f"docs: {page} is stale: run scripts/docs", file=sys.stderr)
        return 1 if stale else 0
    if argv:
        print("usage: scripts/docs [--check]", file=sys.stderr)
        return 2
    for page in PAGES:
        path = ROOT / page
        path.write_text(render(page, path.read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
