"""The server image's build context, as .dockerignore lets it through, and a tag derived from its content.

The tag is the content's hash, so the same source always gets the same tag (ECR tags are immutable, and an
unchanged tree means no rebuild and no rollout), and any change to app/ or the Dockerfile gets a new one.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO_ROOT / "docker" / "Dockerfile.cuda"
# The Dockerfile's serving stage (its last stage, with-model, bakes weights in and needs a model id).
BUILD_TARGET = "server"
PLATFORM = "linux/amd64"


@dataclass(frozen=True)
class ContextRules:
    """The allowlist form our .dockerignore uses: `*`, then `!<dir>/` lines, then `<dir>/**/<glob>` exclusions."""

    included_dirs: tuple[str, ...]
    excluded_names: tuple[str, ...]

    @staticmethod
    def parse(text: str) -> ContextRules:
        included: list[str] = []
        excluded: list[str] = []
        lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
        if not lines or lines[0] != "*":
            raise ValueError(".dockerignore must start with '*' (an allowlist) for the image tag to follow it")
        for line in lines[1:]:
            if line.startswith("!") and line.endswith("/") and "*" not in line:
                included.append(line[1:-1])
            elif "/**/" in line and line.split("/**/", 1)[0] in included:
                excluded.append(line.split("/**/", 1)[1])
            else:
                raise ValueError(f".dockerignore line {line!r} is not a form the image tag understands")
        return ContextRules(tuple(included), tuple(excluded))

    def files(self, root: Path) -> list[Path]:
        """Every file the build context holds, sorted."""
        found = []
        for directory in self.included_dirs:
            for path in sorted((root / directory).rglob("*")):
                parts = path.relative_to(root).parts
                excluded = any(fnmatch.fnmatch(part, glob) for part in parts for glob in self.excluded_names)
                if path.is_file() and not excluded:
                    found.append(path)
        return found


def context_tag(root: Path = REPO_ROOT, dockerfile: Path = DOCKERFILE) -> str:
    """`src-<12 hex>`: a hash of the Dockerfile and of every file in the build context (paths and bytes)."""
    rules = ContextRules.parse((root / ".dockerignore").read_text(encoding="utf-8"))
    digest = hashlib.sha256()
    for path in [dockerfile, *rules.files(root)]:
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return f"src-{digest.hexdigest()[:12]}"
