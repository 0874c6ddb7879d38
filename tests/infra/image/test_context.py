"""The server image's tag follows the build context that .dockerignore lets through, and nothing else."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from stack.image.context import DOCKERFILE, REPO_ROOT, ContextRules, context_tag


def copy_context(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    shutil.copytree(REPO_ROOT / "app", root / "app", ignore=shutil.ignore_patterns("__pycache__"))
    (root / "docker").mkdir()
    shutil.copy(DOCKERFILE, root / "docker" / DOCKERFILE.name)
    shutil.copy(REPO_ROOT / ".dockerignore", root / ".dockerignore")
    return root


def tag_of(root: Path) -> str:
    return context_tag(root, root / "docker" / DOCKERFILE.name)


def test_the_repository_dockerignore_is_understood() -> None:
    rules = ContextRules.parse((REPO_ROOT / ".dockerignore").read_text(encoding="utf-8"))
    assert rules.included_dirs == ("app",)
    assert "__pycache__" in rules.excluded_names
    files = rules.files(REPO_ROOT)
    assert REPO_ROOT / "app" / "__main__.py" in files
    assert not any("__pycache__" in path.parts for path in files)


def test_tag_is_stable_and_changes_with_the_server_code_or_dockerfile(tmp_path: Path) -> None:
    root = copy_context(tmp_path)
    first = tag_of(root)
    assert first == tag_of(root) and first.startswith("src-") and len(first) == 16
    (root / "README.md").write_text("outside the context")
    (root / "app" / "__pycache__").mkdir(exist_ok=True)
    (root / "app" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    assert tag_of(root) == first, "files the build never sees must not change the tag"
    (root / "app" / "server.py").write_text((root / "app" / "server.py").read_text() + "\n# changed\n")
    second = tag_of(root)
    assert second != first
    dockerfile = root / "docker" / DOCKERFILE.name
    dockerfile.write_text(dockerfile.read_text() + "\n# changed\n")
    assert tag_of(root) not in (first, second)


@pytest.mark.parametrize("text", ["app/\n", "*\n!app/**\n", "*\n!app/\ntests/**/x\n"])
def test_dockerignore_forms_the_tag_cannot_follow_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"\.dockerignore"):
        ContextRules.parse(text)
