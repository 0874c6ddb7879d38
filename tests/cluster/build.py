"""Builds the real engines the tests run (a Kubernetes control plane, etcd, kwok) from the Go module proxy.

    .venv/bin/python -m tests.cluster.build        # or: scripts/engines

Binaries land in ~/.cache/deepseek-inference/bin/<name>-<version>/, with Go's module and build caches beside them
(outside the work tree), so a second run finds everything and builds nothing, and a changed pin builds afresh.
Versions are pinned in infra/stack/versions.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stack import versions

CACHE = Path(os.environ.get("DEEPSEEK_ENGINES_CACHE", Path.home() / ".cache" / "deepseek-inference"))
BIN = CACHE / "bin"
SOURCES = CACHE / "src"
GOPATH = CACHE / "go"


@dataclass(frozen=True)
class Engine:
    """One build: a wrapper module requiring `module@version`, and the main packages built from it."""

    name: str
    version: str
    module: str
    module_version: str
    # binary name -> main package (`./...`: a package the prepare step writes into the wrapper module)
    packages: dict[str, str]
    ldflags: str = "-s -w"
    # Go build tags (`-tags`), e.g. to leave out parts of a binary the tests never run.
    tags: str = ""
    # Extra go.mod lines (replaces), computed from the required module's own go.mod.
    replaces: Callable[[Engine, dict[str, str], Path], list[str]] | None = None
    # Writes files into the wrapper module before it is tidied and built.
    prepare: Callable[[Engine, dict[str, str], Path], None] | None = field(default=None)
    # A module of this repository (its own go.mod and go.sum) built in place instead of a wrapper module; these
    # files of it are installed beside the binaries.
    source: Path | None = None
    companions: tuple[str, ...] = ()

    @property
    def directory(self) -> Path:
        return BIN / f"{self.name}-{self.version}"

    def binary(self, name: str) -> Path:
        return self.directory / name

    @property
    def built(self) -> bool:
        return all(self.binary(name).exists() for name in [*self.packages, *self.companions])


def _kubernetes() -> Engine:
    version = versions.TEST_KUBERNETES_VERSION
    minor = version.split(".")[1]
    stamp = " ".join(
        f"-X k8s.io/component-base/version.{key}={value}"
        for key, value in (
            ("gitVersion", f"v{version}"),
            ("gitMajor", "1"),
            ("gitMinor", minor),
            ("gitTreeState", "clean"),
        )
    )
    return Engine(
        name="kubernetes",
        version=version,
        module="k8s.io/kubernetes",
        module_version=f"v{version}",
        packages={
            name: f"k8s.io/kubernetes/cmd/{name}"
            for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
        },
        ldflags=f"-s -w {stamp}",
        replaces=_staging_replaces,
    )


def _pulumi_cli() -> Engine:
    version = versions.TEST_PULUMI_CLI_VERSION
    return Engine(
        name="pulumi",
        version=version,
        module="github.com/pulumi/pulumi/pkg/v3",
        module_version=version,
        packages={"pulumi": "github.com/pulumi/pulumi/pkg/v3/cmd/pulumi"},
        ldflags=f"-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version={version}",
        replaces=_published_replaces,
    )


PROVIDER_DIR = "cmd/pulumi-resource-kubernetes"


def _pulumi_kubernetes() -> Engine:
    pseudo_version, release = versions.TEST_PULUMI_KUBERNETES_PROVIDER
    return Engine(
        name="pulumi-resource-kubernetes",
        version=release,
        module="github.com/pulumi/pulumi-kubernetes/provider/v4",
        module_version=pseudo_version,
        packages={"pulumi-resource-kubernetes": f"./{PROVIDER_DIR}"},
        ldflags=f"-s -w -X github.com/pulumi/pulumi-kubernetes/provider/v4/pkg/version.Version={release}",
        prepare=_provider_main,
    )


def _published_replaces(engine: Engine, env: dict[str, str], work: Path) -> list[str]:
    """`go build` of a module that has replace lines needs them in the main module: the non-relative ones of the
    required module's go.mod (the relative ones point into its own repository and are published modules)."""
    document = _module_go_mod(engine, env, work)
    return [
        f"\t{item['Old']['Path']} => {item['New']['Path']} {item['New']['Version']}"
        for item in document.get("Replace") or []
        if item["New"].get("Version")
    ]


def _provider_main(engine: Engine, env: dict[str, str], work: Path) -> None:
    """The provider's main package embeds its schema as generated files its repository ignores; write them from
    the schema the module ships, as the provider's own `go generate` does (version set, compact JSON)."""
    info = json.loads(_go(["mod", "download", "-json", f"{engine.module}@{engine.module_version}"], work, env))
    source = Path(info["Dir"]) / PROVIDER_DIR
    target = work / PROVIDER_DIR
    target.mkdir(parents=True, exist_ok=True)
    (target / "main.go").write_text((source / "main.go").read_text())
    schema = json.loads((source / "schema.json").read_text())
    schema["version"] = engine.version
    (target / "schema-embed.json").write_text(json.dumps(schema, separators=(",", ":")))
    mapping = json.loads((source / "terraform-mapping.json").read_text())
    (target / "terraform-mapping-embed.json").write_text(json.dumps(mapping, separators=(",", ":")))


LANGUAGE_HOST = Path(__file__).resolve().parent / "language_host"


def _language_host() -> Engine:
    """The Python language host of tests/cluster/language_host (its main.go says why it is ours), versioned by a
    hash of its sources so that an edit builds it afresh."""
    digest = hashlib.sha256()
    for path in sorted(LANGUAGE_HOST.iterdir()):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes())
    version = f"src-{digest.hexdigest()[:12]}"
    # The engine wants a plain semantic version from a plugin: the SDK's, which this host is built on.
    stamp = f"-s -w -X main.Version={versions.TEST_PULUMI_CLI_VERSION.lstrip('v')}"
    module = "deepseek-inference/tests/cluster/language_host"  # its go.mod
    packages = {"pulumi-language-python": "."}
    return Engine(
        "pulumi-language-python",
        version,
        module,
        version,
        packages,
        stamp,
        source=LANGUAGE_HOST,
        companions=("run_program.py",),
    )


def engines() -> list[Engine]:
    return [
        _kubernetes(),
        _pulumi_cli(),
        _language_host(),
        _pulumi_kubernetes(),
        # etcd's main package is its server module's root.
        Engine(
            "etcd",
            versions.TEST_ETCD_VERSION,
            "go.etcd.io/etcd/server/v3",
            versions.TEST_ETCD_VERSION,
            {"etcd": "go.etcd.io/etcd/server/v3"},
        ),
        Engine(
            "kwok",
            versions.TEST_KWOK_VERSION,
            "sigs.k8s.io/kwok",
            versions.TEST_KWOK_VERSION,
            {name: f"sigs.k8s.io/kwok/cmd/{name}" for name in ("kwok", "kwokctl")},
        ),
        Engine(
            "controller-gen",
            versions.TEST_CONTROLLER_GEN_VERSION,
            "sigs.k8s.io/controller-tools",
            versions.TEST_CONTROLLER_GEN_VERSION,
            {"controller-gen": "sigs.k8s.io/controller-tools/cmd/controller-gen"},
        ),
        # promtool parses and unit-tests the alert rules and checks the adapter's and the dashboard's PromQL.
        # remove_all_sd leaves out the service-discovery plugins (cloud SDKs) that rule checks never use.
        Engine(
            "promtool",
            versions.TEST_PROMTOOL_VERSION,
            "github.com/prometheus/prometheus",
            versions.TEST_PROMTOOL_VERSION,
            {"promtool": "github.com/prometheus/prometheus/cmd/promtool"},
            tags="remove_all_sd",
        ),
    ]


def engine_binary(name: str) -> Path:
    """The path of a built engine binary; a clear error naming the fix when it has not been built."""
    path = next(engine.binary(name) for engine in engines() if name in engine.packages)
    if not path.exists():
        raise RuntimeError(f"engine not built: {path}; run `scripts/engines` (scripts/test does)")
    return path


def go_environment() -> dict[str, str]:
    go = shutil.which("go") or "/usr/local/go/bin/go"
    return {
        **os.environ,
        "PATH": f"{Path(go).parent}:{os.environ.get('PATH', '')}",
        "GOPATH": str(GOPATH),
        "GOMODCACHE": str(GOPATH / "pkg" / "mod"),
        "GOCACHE": str(GOPATH / "cache"),
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOFLAGS": "-buildvcs=false",
    }


def _go(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"engines: `go {' '.join(args)}` failed in {cwd}:\n{done.stderr.strip()}")
    return done.stdout


def _module_go_mod(engine: Engine, env: dict[str, str], work: Path) -> dict[str, Any]:
    info = json.loads(_go(["mod", "download", "-json", f"{engine.module}@{engine.module_version}"], work, env))
    return json.loads(_go(["mod", "edit", "-json", info["GoMod"]], work, env))  # type: ignore[no-any-return]


def _staging_replaces(engine: Engine, env: dict[str, str], work: Path) -> list[str]:
    """k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with ./staging paths; a module
    that requires it must replace each with the matching published version (generated from its own go.mod)."""
    document = _module_go_mod(engine, env, work)
    required = {item["Path"] for item in document.get("Require") or []}
    staging_version = "v0." + engine.version.split(".", 1)[1]
    return [
        f"\t{item['Old']['Path']} => {item['Old']['Path']} {staging_version}"
        for item in document.get("Replace") or []
        if item["New"]["Path"].startswith("./staging/") and item["Old"]["Path"] in required
    ]


def build(engine: Engine, env: dict[str, str]) -> float:
    """Builds `engine` unless its binaries exist; returns the seconds it took (0 when nothing was built)."""
    if engine.built:
        return 0.0
    started = time.monotonic()
    if engine.source is not None:
        engine.directory.mkdir(parents=True, exist_ok=True)
        for name, package in engine.packages.items():
            _go(
                ["build", *_build_flags(engine), "-o", str(engine.binary(name)), package],
                engine.source,
                env,
            )
        for name in engine.companions:
            shutil.copyfile(engine.source / name, engine.directory / name)
        return time.monotonic() - started
    work = SOURCES / f"{engine.name}-{engine.version}"
    work.mkdir(parents=True, exist_ok=True)
    lines = [f"module local/{engine.name}-build", "", "go 1.26", "", f"require {engine.module} {engine.module_version}"]
    (work / "go.mod").write_text("\n".join(lines) + "\n")
    if engine.replaces is not None:
        lines += ["", "replace (", *engine.replaces(engine, env, work), ")"]
        (work / "go.mod").write_text("\n".join(lines) + "\n")
    if engine.prepare is not None:
        engine.prepare(engine, env, work)
    imports = "\n".join(f'\t_ "{package}"' for package in engine.packages.values() if not package.startswith("./"))
    if imports:
        (work / "tools.go").write_text(f"//go:build tools\n\npackage tools\n\nimport (\n{imports}\n)\n")
    _go(["mod", "tidy"], work, env)
    engine.directory.mkdir(parents=True, exist_ok=True)
    for name, package in engine.packages.items():
        # One package at a time, each to its own name; packages shared between them compile once (GOCACHE).
        _go(["build", *_build_flags(engine), "-o", str(engine.binary(name)), package], work, env)
    return time.monotonic() - started


def _build_flags(engine: Engine) -> list[str]:
    return ["-trimpath", "-ldflags", engine.ldflags, *(["-tags", engine.tags] if engine.tags else [])]


MONITORING_API = "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring"
CRD_DIR = CACHE / "crds" / f"monitoring-{versions.TEST_PROMETHEUS_OPERATOR_API_VERSION}"


def generate_monitoring_crds(env: dict[str, str], controller_gen: Path) -> float:
    """The Prometheus Operator's CRDs, generated by controller-gen from the operator's own API types."""
    if any(CRD_DIR.glob("*.yaml")):
        return 0.0
    started = time.monotonic()
    work = SOURCES / f"monitoring-crds-{versions.TEST_PROMETHEUS_OPERATOR_API_VERSION}"
    work.mkdir(parents=True, exist_ok=True)
    (work / "go.mod").write_text(
        f"module local/monitoring-crds\n\ngo 1.26\n\nrequire {MONITORING_API} "
        f"{versions.TEST_PROMETHEUS_OPERATOR_API_VERSION}\n"
    )
    (work / "tools.go").write_text(f'//go:build tools\n\npackage tools\n\nimport _ "{MONITORING_API}/v1"\n')
    _go(["mod", "tidy"], work, env)
    CRD_DIR.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        [
            str(controller_gen),
            "crd:crdVersions=v1,maxDescLen=0",
            f"paths={MONITORING_API}/v1",
            f"output:crd:dir={CRD_DIR}",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"engines: controller-gen failed:\n{done.stderr.strip()}")
    return time.monotonic() - started


def pulumi_distribution(built_engines: list[Engine] | None = None) -> Path:
    """The CLI and the Python language host in one directory, as Pulumi's own releases ship them: the CLI takes a
    language host beside its own executable as bundled (one on PATH earns a warning on every run, and
    `pulumi plugin install` refuses bundled kinds). Hard links: no copy, and the binary's path stays here."""
    built = {engine.name: engine for engine in built_engines or engines()}
    cli, host = built["pulumi"], built["pulumi-language-python"]
    directory = BIN / f"pulumi-dist-{cli.version}-{host.version}"
    files = [cli.binary("pulumi"), host.binary("pulumi-language-python")]
    files += [host.directory / name for name in host.companions]
    missing = [str(path) for path in files if not path.exists()]
    if missing:
        raise SystemExit(f"engines: {', '.join(missing)} missing: run `scripts/engines` (scripts/test does)")
    if not all((directory / path.name).exists() for path in files):
        directory.mkdir(parents=True, exist_ok=True)
        for path in files:
            (directory / path.name).unlink(missing_ok=True)
            os.link(path, directory / path.name)
    return directory


# Builds run two at a time: one Go build keeps both cores busy only part of the time (linking is serial; the CLI's
# build used 115% CPU alone), so a second build beside it fills the gaps. Longest first (cold minutes on the
# project's 2-core machine) so the short ones fill in at the end.
PARALLEL_BUILDS = int(os.environ.get("DEEPSEEK_ENGINE_BUILDS", "2"))
LONGEST_FIRST = (
    "pulumi-resource-kubernetes",
    "kubernetes",
    "pulumi",
    "promtool",
    "kwok",
    "pulumi-language-python",
    "etcd",
)


def _longest_first(engine: Engine) -> int:
    return LONGEST_FIRST.index(engine.name) if engine.name in LONGEST_FIRST else len(LONGEST_FIRST)


def main() -> int:
    env = go_environment()
    started = time.monotonic()
    wanted = engines()  # once: the language host's version is a hash of its sources as they are now
    with ThreadPoolExecutor(max_workers=max(PARALLEL_BUILDS, 1)) as pool:
        running = {pool.submit(build, engine, env): engine for engine in sorted(wanted, key=_longest_first)}
        for future in as_completed(running):
            try:
                engine, seconds = running[future], future.result()
            except BaseException:
                # Say so now, not after the builds still queued (tens of minutes cold): drop them.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            state = f"built in {seconds:.0f} s" if seconds else "already built"
            print(f"engines: {engine.name} {engine.version}: {state} -> {engine.directory}", flush=True)
    controller_gen = next(e for e in wanted if e.name == "controller-gen").binary("controller-gen")
    seconds = generate_monitoring_crds(env, controller_gen)
    print(f"engines: monitoring CRDs: {f'generated in {seconds:.0f} s' if seconds else 'already there'} -> {CRD_DIR}")
    print(f"engines: pulumi with its Python language host -> {pulumi_distribution(wanted)}")
    print(f"engines: ready in {time.monotonic() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
