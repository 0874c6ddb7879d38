"""Names and small helpers shared by the Kubernetes components (no resources here)."""

from __future__ import annotations

from stack.nodes import GPU_PRESENT_LABEL, GPU_TAINT

NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

# The server's contract (app/): `python -m app` on 8080, runs as UID 10001 (docker/Dockerfile.cuda), HF_HOME=/models.
SERVER_PORT = 8080
SERVER_UID = 10001
MODEL_CACHE_PATH = "/models"

MANAGED_BY = {"app.kubernetes.io/managed-by": "pulumi", "app.kubernetes.io/part-of": "deepseek-inference"}


def checkov_skips(**reasons: str) -> dict[str, str]:
    """Annotations that make checkov skip a check on this object, each with the reason it does not apply.

    `checkov_skips(CKV_K8S_35="...")` → `{"checkov.io/skip1": "CKV_K8S_35=..."}`.
    """
    return {f"checkov.io/skip{index}": f"{check}={reason}" for index, (check, reason) in enumerate(reasons.items(), 1)}


def gpu_node_tolerations() -> list[dict[str, str]]:
    """Tolerates the GPU taint whatever its value (`nvidia.com/gpu=true:NoSchedule` on our node group)."""
    return [{"key": GPU_TAINT.key, "operator": "Exists", "effect": GPU_TAINT.kubernetes_effect}]


def gpu_node_affinity() -> dict[str, object]:
    """Required node affinity to nodes labelled as GPU nodes (Helm values form: camelCase)."""
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": GPU_PRESENT_LABEL, "operator": "In", "values": ["true"]}]}
                ]
            }
        }
    }
