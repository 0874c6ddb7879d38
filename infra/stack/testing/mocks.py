"""Pulumi mocks that record every registered resource and invoke, and answer with plausible provider outputs."""

from __future__ import annotations

import base64
import copy
from dataclasses import dataclass, field
from typing import Any

import pulumi

ACCOUNT = "123456789012"
MOCK_IMAGE_DIGEST = "sha256:" + "ab" * 32
# How the engine marks a secret value in serialized properties.
_SECRET_SIG = ("4dabf18193072939515e22adb298388d", "1b47061264138c4ac30d75fd1eb44270")


def unwrap_secrets(value: Any) -> Any:
    """The plain value inside every secret marker, so tests and policies read secrets like other inputs."""
    if isinstance(value, dict):
        if value.get(_SECRET_SIG[0]) == _SECRET_SIG[1]:
            return unwrap_secrets(value.get("value"))
        return {key: unwrap_secrets(item) for key, item in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(item) for item in value]
    return value


@dataclass(frozen=True)
class RecordedResource:
    type: str
    name: str
    inputs: dict[str, Any]
    provider: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, "name": self.name, "inputs": self.inputs}


@dataclass(frozen=True)
class RecordedOptions:
    """Resource options the mocks are not told about, read from the engine request itself."""

    # create / update / delete, as the program set them ("" when not set).
    custom_timeouts: dict[str, str]
    # "type name" of every resource this one depends on (explicitly, or through the outputs it takes).
    depends_on: list[str]
    # The provider plugin version the program asked for ("" = whatever is installed).
    plugin_version: str


@dataclass(frozen=True)
class RecordedCall:
    token: str
    args: dict[str, Any] = field(default_factory=dict)


class RecordingMocks(pulumi.runtime.Mocks):
    """Echoes inputs back as outputs, adds the computed outputs our components read, records everything.

    Subclass it and override `fake_outputs` or `call` to answer more (e.g. Helm template invokes).
    """

    def __init__(self, region: str = "us-west-2") -> None:
        self.region = region
        self.resources: list[RecordedResource] = []
        self.calls: list[RecordedCall] = []
        # "type name" -> options; filled by the harness, which sees the engine requests.
        self.options: dict[str, RecordedOptions] = {}

    def record_request(self, request: Any) -> None:
        """Called by the harness with each RegisterResource request, before `new_resource`."""
        timeouts = request.customTimeouts
        self.options[f"{request.type} {request.name}"] = RecordedOptions(
            custom_timeouts={"create": timeouts.create, "update": timeouts.update, "delete": timeouts.delete},
            depends_on=[_type_and_name(urn) for urn in request.dependencies],
            plugin_version=request.version,
        )

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str | None, dict[Any, Any]]:
        inputs = copy.deepcopy(dict(args.inputs))
        self.resources.append(RecordedResource(args.typ, args.name, unwrap_secrets(inputs), args.provider))
        outputs = {**inputs, **self.fake_outputs(args.typ, args.name, inputs)}
        return f"{args.name}-id", outputs

    # A plain dict: the mock monitor breaks on the (outputs, failures) tuple the base class declares.
    def call(self, args: pulumi.runtime.MockCallArgs) -> dict[Any, Any]:  # type: ignore[override]
        self.calls.append(RecordedCall(args.token, dict(args.args)))
        if args.token == "aws:ecr/getAuthorizationToken:getAuthorizationToken":
            registry = f"{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com"
            return {"userName": "AWS", "password": "mock-ecr-password", "proxyEndpoint": f"https://{registry}"}
        return {}

    def fake_outputs(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        """Computed outputs a real provider would return for `typ` (only those our program reads)."""
        if typ == "docker-build:index:Image":
            # What the provider reports after a push: the first tag with the pushed digest.
            return {"ref": f"{inputs['tags'][0]}@{MOCK_IMAGE_DIGEST}", "digest": MOCK_IMAGE_DIGEST}
        if not typ.startswith("aws:"):
            return {}
        resource_name = inputs.get("name", name)
        outputs: dict[str, Any] = {
            "arn": f"arn:aws:mock:{self.region}:{ACCOUNT}:{typ}/{resource_name}",
            "name": resource_name,
        }
        if typ == "aws:iam/role:Role":
            outputs["arn"] = f"arn:aws:iam::{ACCOUNT}:role/{resource_name}"
        elif typ == "aws:kms/key:Key":
            outputs["keyId"] = f"{name}-key-id"
        elif typ == "aws:eks/cluster:Cluster":
            outputs |= {
                "endpoint": f"https://{resource_name}.gr7.{self.region}.eks.amazonaws.com",
                "certificateAuthority": {"data": base64.b64encode(b"mock-ca").decode()},
                "identities": [{"oidcs": [{"issuer": f"https://oidc.eks.{self.region}.amazonaws.com/id/MOCK"}]}],
                "vpcConfig": {**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": "sg-mockcluster"},
            }
        elif typ == "aws:eks/nodeGroup:NodeGroup":
            node_group_name = inputs.get("nodeGroupName", f"{name}-mock")
            outputs |= {
                "nodeGroupName": node_group_name,
                "resources": [{"autoscalingGroups": [{"name": f"eks-{node_group_name}-mock-uuid"}]}],
            }
        elif typ == "aws:ec2/launchTemplate:LaunchTemplate":
            outputs |= {"latestVersion": 1, "defaultVersion": 1}
        elif typ == "aws:ecr/repository:Repository":
            outputs["repositoryUrl"] = f"{ACCOUNT}.dkr.ecr.{self.region}.amazonaws.com/{resource_name}"
            outputs["registryId"] = ACCOUNT
        elif typ == "aws:eks/accessEntry:AccessEntry":
            outputs["principalArn"] = inputs.get("principalArn")
        return outputs


def _type_and_name(urn: str) -> str:
    """'urn:pulumi:stack::project::parent$type::name' -> 'type name'."""
    parts = urn.split("::")
    return f"{parts[2].split('$')[-1]} {parts[3]}"
