"""The docs are part of the product: README.md stays a short front page, every page is reachable from it, no
relative link is broken, the generated reference tables match the code, and CI runs the README's test command."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from app.settings import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = sorted((ROOT / "docs").rglob("*.md"))
# [text](target), not images' or code's brackets
LINK = re.compile(r"(?<!!)\[[^\]\n]+\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("generate_docs", ROOT / "scripts" / "generate_docs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text()))


def local_target(page: Path, target: str) -> Path | None:
    if re.match(r"^[a-z]+:", target) or target.startswith("#"):
        return None
    return (page.parent / target.split("#", 1)[0]).resolve()


def test_the_readme_is_a_front_page() -> None:
    assert len(README.read_bytes()) <= 12 * 1024


@pytest.mark.parametrize("page", [README, *PAGES], ids=lambda page: str(page.relative_to(ROOT)))
def test_no_relative_link_is_broken(page: Path) -> None:
    for target in links(page):
        path = local_target(page, target)
        assert path is None or path.exists(), f"{page.relative_to(ROOT)} links to {target}, which does not exist"


def test_every_page_is_reachable_from_the_readme() -> None:
    reached: set[Path] = set()
    frontier = [README.resolve()]
    while frontier:
        page = frontier.pop()
        for target in links(page):
            path = local_target(page, target)
            if path is not None and path.is_dir():
                path = path / "README.md"
            if path is not None and path.suffix == ".md" and path.exists() and path not in reached:
                reached.add(path)
                frontier.append(path)
    unreached = [str(page.relative_to(ROOT)) for page in PAGES if page.resolve() not in reached]
    assert not unreached, f"no link leads to {unreached}"


def test_the_generated_tables_match_the_code() -> None:
    assert generator().stale_pages() == [], "run scripts/docs"


def test_an_edited_generated_table_is_found_stale() -> None:
    docs = generator()
    page = "docs/server/configuration.md"
    text = (ROOT / page).read_text()
    edited = text.replace("| `--port` |", "| `--listen-port` |")
    assert edited != text and docs.render(page, edited) == text


def test_every_server_setting_is_on_the_configuration_page() -> None:
    text = (ROOT / "docs/server/configuration.md").read_text()
    for option in OPTIONS:
        assert f"`{option.flag}`" in text and f"`{option.env}`" in text


def test_ci_runs_the_readme_test_command_and_nothing_else() -> None:
    assert "scripts/test" in README.read_text()
    lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ['exec "$(dirname "$0")/../scripts/test"']


def test_the_two_readme_commands_exist_and_are_executable() -> None:
    for command in ("scripts/serve", "scripts/test"):
        assert command in README.read_text()
        assert (ROOT / command).stat().st_mode & 0o111
