"""The README is part of the product: its server settings table and its test command must match the code."""

from __future__ import annotations

from pathlib import Path

from app.settings import OPTIONS, describe

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_settings_table_is_the_one_the_code_describes() -> None:
    assert describe() in README, "regenerate it: python -c 'from app.settings import describe; print(describe())'"


def test_every_setting_has_its_flag_and_variable_in_the_readme() -> None:
    for option in OPTIONS:
        assert f"`{option.flag}`" in README
        assert f"`{option.env}`" in README


def test_ci_runs_the_readme_test_command_and_nothing_else() -> None:
    assert "scripts/test" in README
    lines = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ['exec "$(dirname "$0")/../scripts/test"']


def test_the_two_readme_commands_exist_and_are_executable() -> None:
    for command in ("scripts/serve", "scripts/test"):
        assert f"{command}" in README
        assert (ROOT / command).stat().st_mode & 0o111
