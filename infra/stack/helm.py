"""Helm releases of the charts pinned in `stack.versions` (used by both the AWS and the Kubernetes layer)."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_kubernetes as k8s

from stack.versions import HelmChart


def pinned_release(
    resource_name: str,
    chart: HelmChart,
    *,
    namespace: str,
    values: Mapping[str, object],
    opts: pulumi.ResourceOptions,
    timeout: int | None = None,
) -> k8s.helm.v3.Release:
    """A release of `chart` at its pinned version from its repository, named after the chart.

    `timeout` (seconds) overrides the provider's default wait for the release's resources to become ready.
    """
    return k8s.helm.v3.Release(
        resource_name,
        k8s.helm.v3.ReleaseArgs(
            name=chart.name,
            chart=chart.name,
            version=chart.version,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=chart.repository),
            namespace=namespace,
            values=values,
            timeout=timeout,
        ),
        opts=opts,
    )
