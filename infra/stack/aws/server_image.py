"""ServerImage: builds docker/Dockerfile.cuda with BuildKit and pushes it to the stack's ECR repository, so one
`pulumi up` both makes the repository and fills it. The pods run it by digest (`ref`: `<repo>:<tag>@sha256:...`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pulumi
import pulumi_aws as aws
import pulumi_docker_build as docker_build

from stack.aws.image_registry import BUILD_CACHE_TAG
from stack.versions import DOCKER_BUILD_PROVIDER_VERSION


@dataclass(frozen=True)
class ServerImageArgs:
    repository_url: pulumi.Input[str]
    registry_id: pulumi.Input[str]
    # The build context (the repository root: .dockerignore lets only app/ through) and the Dockerfile in it.
    context_dir: Path
    dockerfile: Path
    target: str
    platform: str
    # The image tag: the content hash of the context (stack.image.context.context_tag).
    tag: str


class ServerImage(pulumi.ComponentResource):
    ref: pulumi.Output[str]

    def __init__(self, name: str, args: ServerImageArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:aws:ServerImage", name, None, opts)
        url = pulumi.Output.from_input(args.repository_url)
        token = aws.ecr.get_authorization_token_output(
            registry_id=args.registry_id, opts=pulumi.InvokeOutputOptions(parent=self)
        )
        cache = url.apply(lambda repository: f"{repository}:{BUILD_CACHE_TAG}")
        image = docker_build.Image(
            name,
            push=True,
            tags=[url.apply(lambda repository: f"{repository}:{args.tag}")],
            context=docker_build.BuildContextArgs(location=str(args.context_dir)),
            dockerfile=docker_build.DockerfileArgs(location=str(args.dockerfile)),
            target=args.target,
            platforms=[docker_build.Platform(args.platform)],
            build_args={"VERSION": args.tag},
            registries=[
                docker_build.RegistryArgs(
                    address=url.apply(lambda repository: repository.split("/", 1)[0]),
                    username=token.user_name,
                    password=token.password,
                )
            ],
            cache_from=[docker_build.CacheFromArgs(registry=docker_build.CacheFromRegistryArgs(ref=cache))],
            # ECR stores a registry cache only as an OCI image manifest.
            cache_to=[
                docker_build.CacheToArgs(
                    registry=docker_build.CacheToRegistryArgs(
                        ref=cache, mode=docker_build.CacheMode.MAX, image_manifest=True, oci_media_types=True
                    )
                )
            ],
            # Previews (pull requests, CI without Docker) never build; `pulumi up` does.
            build_on_preview=False,
            opts=pulumi.ResourceOptions(parent=self, version=DOCKER_BUILD_PROVIDER_VERSION),
        )
        self.ref = image.ref
        self.register_outputs({"ref": self.ref})
