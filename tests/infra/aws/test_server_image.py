"""One `pulumi up` builds and pushes the server image it deploys (issue: the image does not exist on the first run)."""

from __future__ import annotations

from pathlib import Path

import pulumi
import pytest
from stack.image.context import DOCKERFILE, REPO_ROOT, context_tag
from stack.testing import ProgramRun, run_stack
from stack.testing.mocks import MOCK_IMAGE_DIGEST
from stack.versions import DOCKER_BUILD_PROVIDER_VERSION

IMAGE = "docker-build:index:Image"


@pytest.fixture(params=["dev", "prod"])
def run(request: pytest.FixtureRequest) -> ProgramRun:
    return request.getfixturevalue(f"{request.param}_run")  # type: ignore[no-any-return]


def test_the_stack_builds_the_cuda_image_into_its_own_repository(run: ProgramRun) -> None:
    image = run.one(IMAGE).inputs
    repository = run.outputs["imageRepositoryUrl"]
    assert image["push"] is True
    assert image["tags"] == [f"{repository}:{context_tag()}"]
    assert image["dockerfile"] == {"location": str(DOCKERFILE)}
    assert image["context"] == {"location": str(REPO_ROOT)}
    assert image["target"] == "server"
    assert image["platforms"] == ["linux/amd64"]
    assert image["buildOnPreview"] is False, "pull-request previews have no Docker engine to build with"
    (registry,) = image["registries"]
    assert registry["address"] == repository.split("/", 1)[0]
    assert (registry["username"], registry["password"]) == ("AWS", "mock-ecr-password")


def test_layers_are_cached_in_the_registry_under_the_mutable_cache_tag(run: ProgramRun) -> None:
    image = run.one(IMAGE).inputs
    cache = f"{run.outputs['imageRepositoryUrl']}:buildcache"
    assert image["cacheFrom"] == [{"registry": {"ref": cache}}]
    (cache_to,) = image["cacheTo"]
    wanted = {"ref": cache, "mode": "max", "imageManifest": True, "ociMediaTypes": True}
    assert {key: cache_to["registry"][key] for key in wanted} == wanted


def test_pods_run_the_built_image_by_digest(run: ProgramRun) -> None:
    deployment = run.one("kubernetes:apps/v1:Deployment").inputs
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    expected = f"{run.outputs['imageRepositoryUrl']}:{context_tag()}@{MOCK_IMAGE_DIGEST}"
    assert server["image"] == expected
    assert run.outputs["inferenceImage"] == expected
    annotations = deployment["metadata"]["annotations"]
    assert "CKV_K8S_43=" not in " ".join(annotations.values()), "a digest needs no checkov exception"


def test_a_prebuilt_image_means_no_build() -> None:
    prebuilt = "111122223333.dkr.ecr.us-west-2.amazonaws.com/deepseek-inference-dev@sha256:" + "c" * 64
    run = run_stack("dev", overrides={"inference": {"image": prebuilt}}, docker=False)
    assert run.of_type(IMAGE) == []
    assert "aws:ecr/getAuthorizationToken:getAuthorizationToken" not in [call.token for call in run.calls]
    (server,) = run.one("kubernetes:apps/v1:Deployment").inputs["spec"]["template"]["spec"]["containers"]
    assert server["image"] == prebuilt


def test_without_docker_the_run_stops_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/docker.sock")
    with pytest.raises(pulumi.RunError) as caught:
        run_stack("dev", docker=False)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("inference.image is not set, so `pulumi up` builds the server image, but no Docker")
    assert "set inference.image to an image you pushed" in message


def test_the_provider_plugin_is_pinned_with_its_sdk(dev_run: ProgramRun) -> None:
    requirements = (REPO_ROOT / "infra" / "requirements.txt").read_text(encoding="utf-8").split()
    assert f"pulumi-docker-build=={DOCKER_BUILD_PROVIDER_VERSION}" in requirements
    assert dev_run.options_of(dev_run.one(IMAGE)).plugin_version == DOCKER_BUILD_PROVIDER_VERSION
