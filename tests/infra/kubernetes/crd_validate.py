"""Validates custom resources (ServiceMonitor, PrometheusRule) against their CRD's openAPIV3Schema, strictly.

kubernetes-validate ships schemas for built-in kinds only: for a custom resource it prints a warning and passes.
So the tests run this with .venv-tools/bin/python (which has jsonschema) over the plan's manifests:

    .venv-tools/bin/python tests/infra/kubernetes/crd_validate.py SCHEMA_DIR MANIFEST...

SCHEMA_DIR holds the schemas vendored from the pinned kube-prometheus-stack chart (crd_schemas/). "Strict" as in
`kubernetes-validate --strict`: an object schema with `properties` refuses other keys unless the CRD says it keeps
unknown fields. Manifests of built-in kinds are skipped; a custom kind without a schema is an error.
Exit status 0 = all valid; 1 = errors (printed one a line).
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml


def strict(schema: Any) -> Any:
    """A copy of an OpenAPI v3 schema in which objects with `properties` refuse undeclared keys."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    result = {key: strict(value) for key, value in schema.items()}
    if (
        "properties" in schema
        and "additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


def load_schemas(directory: Path) -> dict[tuple[str, str], Any]:
    schemas = {}
    for path in sorted(directory.glob("*.json")):
        document = json.loads(path.read_text(encoding="utf-8"))
        schemas[(document["apiVersion"], document["kind"])] = strict(document["openAPIV3Schema"])
    return schemas


def validate(schemas: dict[tuple[str, str], Any], paths: list[Path]) -> list[str]:
    jsonschema = importlib.import_module("jsonschema")
    errors = []
    for path in paths:
        for manifest in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if not manifest:
                continue
            api_version, kind = manifest.get("apiVersion", ""), manifest.get("kind", "")
            if "." not in api_version.split("/")[0] or api_version.split("/")[0].endswith(".k8s.io"):
                continue  # a built-in kind: kubernetes-validate's job
            schema = schemas.get((api_version, kind))
            if schema is None:
                errors.append(f"{path}: no CRD schema for {api_version} {kind}; vendor it into the schema folder")
                continue
            validator = jsonschema.Draft7Validator(schema)
            for error in sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path)):
                location = ".".join(str(part) for part in error.absolute_path) or "(root)"
                errors.append(f"{path}: {kind} {location}: {error.message}")
    return errors


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    schemas = load_schemas(Path(argv[0]))
    errors = validate(schemas, [Path(arg) for arg in argv[1:]])
    for error in errors:
        print(error)
    checked = len(argv) - 1
    print(f"crd_validate: {checked} files, {len(errors)} errors, schemas for {sorted(kind for _, kind in schemas)}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
