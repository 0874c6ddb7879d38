"""A kubeconfig for an EKS cluster that authenticates with `aws eks get-token` (the caller's AWS credentials)."""

from __future__ import annotations

import json


def render_kubeconfig(cluster_name: str, endpoint: str, certificate_authority_data: str, region: str) -> str:
    """The kubeconfig as JSON text (valid YAML), one cluster, one user, one context."""
    user = {
        "exec": {
            "apiVersion": "client.authentication.k8s.io/v1beta1",
            "command": "aws",
            "args": ["eks", "get-token", "--cluster-name", cluster_name, "--region", region, "--output", "json"],
            "interactiveMode": "Never",
        }
    }
    return json.dumps(
        {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": cluster_name,
                    "cluster": {"server": endpoint, "certificate-authority-data": certificate_authority_data},
                }
            ],
            "users": [{"name": cluster_name, "user": user}],
            "contexts": [{"name": cluster_name, "context": {"cluster": cluster_name, "user": cluster_name}}],
            "current-context": cluster_name,
        },
        indent=2,
    )
