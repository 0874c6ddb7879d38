"""The ECR repository for the inference server image: immutable tags, scan on push, encrypted, pruned.

One tag is mutable: BUILD_CACHE_TAG, the BuildKit layer cache that every `pulumi up` build reads and rewrites."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import pulumi
import pulumi_aws as aws

# The registry cache of the image build (stack.aws.server_image); rewritten by every build, so excluded from
# tag immutability. Server images are tagged by content and stay immutable.
BUILD_CACHE_TAG = "buildcache"


@dataclass(frozen=True)
class ImageRegistryArgs:
    repository_name: str
    keep_images: int
    encryption: Literal["KMS", "AES256"]
    force_delete: bool
    tags: Mapping[str, str]


def lifecycle_policy(keep_images: int) -> str:
    """Expire every image beyond the newest `keep_images` (tagged or not)."""
    return json.dumps(
        {
            "rules": [
                {
                    "rulePriority": 1,
                    "description": f"Keep the newest {keep_images} images",
                    "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": keep_images},
                    "action": {"type": "expire"},
                }
            ]
        }
    )


class ImageRegistry(pulumi.ComponentResource):
    repository_url: pulumi.Output[str]
    repository_arn: pulumi.Output[str]
    registry_id: pulumi.Output[str]

    def __init__(self, name: str, args: ImageRegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:aws:ImageRegistry", name, None, opts)
        if args.keep_images < 1:
            raise ValueError("ImageRegistry: keep_images must be at least 1")
        child = pulumi.ResourceOptions(parent=self)
        repository = aws.ecr.Repository(
            name,
            name=args.repository_name,
            # A tag always names the same image: deployments by tag are reproducible. Only the build cache moves.
            image_tag_mutability="IMMUTABLE_WITH_EXCLUSION",
            image_tag_mutability_exclusion_filters=[
                aws.ecr.RepositoryImageTagMutabilityExclusionFilterArgs(filter=BUILD_CACHE_TAG, filter_type="WILDCARD")
            ],
            image_scanning_configuration=aws.ecr.RepositoryImageScanningConfigurationArgs(scan_on_push=True),
            encryption_configurations=[aws.ecr.RepositoryEncryptionConfigurationArgs(encryption_type=args.encryption)],
            force_delete=args.force_delete,
            tags=dict(args.tags),
            opts=child,
        )
        aws.ecr.LifecyclePolicy(name, repository=repository.name, policy=lifecycle_policy(args.keep_images), opts=child)
        self.repository_url = repository.repository_url
        self.repository_arn = repository.arn
        self.registry_id = repository.registry_id
        self.register_outputs(
            {"repositoryUrl": self.repository_url, "repositoryArn": self.repository_arn, "registryId": self.registry_id}
        )
