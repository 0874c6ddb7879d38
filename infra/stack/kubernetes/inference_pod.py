"""The inference server's pod template (pure: typed settings in, typed Kubernetes args out)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

from stack import versions
from stack.config.kubernetes import (
    S3_DOWNLOAD_REQUESTS,
    LifecycleConfig,
    ModelCacheConfig,
    ModelConfig,
    ResourcesConfig,
    SchedulingConfig,
)
from stack.kubernetes.common import MODEL_CACHE_PATH, SERVER_PORT, SERVER_UID
from stack.nodes import (
    CAPACITY_TYPE_LABEL,
    GPU_PRESENT_LABEL,
    GPU_RESOURCE,
    GPU_TAINT,
    HOSTNAME_LABEL,
    ZONE_LABEL,
    capacity_type,
)

API_KEYS_KEY = "API_KEYS"
S3_WEIGHTS_PATH = f"{MODEL_CACHE_PATH}/weights"
_PROBE_PERIOD_SECONDS = 10


@dataclass(frozen=True)
class ServerPodArgs:
    """What the pod template is made of: the validated sections of `inference` that shape one server pod."""

    gpu_count: int
    model: ModelConfig
    resources: ResourcesConfig
    model_cache: ModelCacheConfig
    scheduling: SchedulingConfig
    lifecycle: LifecycleConfig
    startup_seconds: int  # the startup probe's budget (inference.startup_seconds: as set, or from the weights' size)
    tensor_parallel_size: int = 1  # ranks the server splits the model across (inference.ranks)


@dataclass(frozen=True)
class PodNames:
    service_account: str
    priority_class: str
    # The Secret holding API_KEYS; None runs the server open (allowed only where requireApiKeys is false).
    api_keys_secret: str | None


def pod_template(
    pod: ServerPodArgs,
    image: pulumi.Input[str],
    labels: dict[str, str],
    names: PodNames,
    annotations: dict[str, str],
) -> k8s.core.v1.PodTemplateSpecArgs:
    return k8s.core.v1.PodTemplateSpecArgs(
        metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels, annotations=annotations),
        spec=k8s.core.v1.PodSpecArgs(
            service_account_name=names.service_account,
            automount_service_account_token=False,
            enable_service_links=False,
            priority_class_name=names.priority_class,
            termination_grace_period_seconds=pod.lifecycle.termination_grace_period_seconds,
            security_context=k8s.core.v1.PodSecurityContextArgs(
                run_as_non_root=True,
                run_as_user=SERVER_UID,
                run_as_group=SERVER_UID,
                fs_group=SERVER_UID,
                fs_group_change_policy="OnRootMismatch",
                seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
            ),
            tolerations=[
                k8s.core.v1.TolerationArgs(key=GPU_TAINT.key, operator="Exists", effect=GPU_TAINT.kubernetes_effect)
            ],
            affinity=_affinity(pod.scheduling),
            topology_spread_constraints=_spread(pod.scheduling, labels),
            init_containers=[_s3_download(pod.model)] if pod.model.source == "s3" else None,
            containers=[_server(pod, image, names)],
            volumes=_volumes(pod.model_cache, pod.resources),
        ),
    )


def _affinity(scheduling: SchedulingConfig) -> k8s.core.v1.AffinityArgs:
    preferred = None
    if scheduling.capacity_type != "any":
        capacity = capacity_type(scheduling.capacity_type == "spot")
        preferred = [
            k8s.core.v1.PreferredSchedulingTermArgs(
                weight=100,
                preference=k8s.core.v1.NodeSelectorTermArgs(
                    match_expressions=[
                        k8s.core.v1.NodeSelectorRequirementArgs(
                            key=CAPACITY_TYPE_LABEL, operator="In", values=[capacity]
                        )
                    ]
                ),
            )
        ]
    return k8s.core.v1.AffinityArgs(
        node_affinity=k8s.core.v1.NodeAffinityArgs(
            required_during_scheduling_ignored_during_execution=k8s.core.v1.NodeSelectorArgs(
                node_selector_terms=[
                    k8s.core.v1.NodeSelectorTermArgs(
                        match_expressions=[
                            k8s.core.v1.NodeSelectorRequirementArgs(
                                key=GPU_PRESENT_LABEL, operator="In", values=["true"]
                            )
                        ]
                    )
                ]
            ),
            preferred_during_scheduling_ignored_during_execution=preferred,
        )
    )


def _spread(scheduling: SchedulingConfig, labels: dict[str, str]) -> list[k8s.core.v1.TopologySpreadConstraintArgs]:
    selector = k8s.meta.v1.LabelSelectorArgs(match_labels=labels)
    zone_rule = "DoNotSchedule" if scheduling.zone_spread == "required" else "ScheduleAnyway"
    return [
        k8s.core.v1.TopologySpreadConstraintArgs(
            max_skew=1, topology_key=ZONE_LABEL, when_unsatisfiable=zone_rule, label_selector=selector
        ),
        k8s.core.v1.TopologySpreadConstraintArgs(
            max_skew=1, topology_key=HOSTNAME_LABEL, when_unsatisfiable="ScheduleAnyway", label_selector=selector
        ),
    ]


def _security_context() -> k8s.core.v1.SecurityContextArgs:
    """Pod Security `restricted`, plus a read-only root filesystem (writable paths are volumes)."""
    return k8s.core.v1.SecurityContextArgs(
        run_as_non_root=True,
        run_as_user=SERVER_UID,
        run_as_group=SERVER_UID,
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


# NCCL between the ranks of one pod: NVLink/NVSwitch within the node, found by NCCL itself; warnings and errors
# go to the log. EFA stays off: it only matters between nodes, and one model spans one node here (README).
NCCL_ENVIRONMENT = {"NCCL_DEBUG": "WARN"}


def environment(pod: ServerPodArgs, names: PodNames) -> list[k8s.core.v1.EnvVarArgs]:
    model, lifecycle = pod.model, pod.lifecycle
    if model.source == "s3":
        served_name = model.served_model_name or (model.s3_uri or "").rstrip("/").rsplit("/", 1)[-1]
        values: dict[str, str | int | None] = {"MODEL": S3_WEIGHTS_PATH, "SERVED_MODEL_NAME": served_name}
    else:
        values = {"MODEL": model.id, "SERVED_MODEL_NAME": model.served_model_name}
    values |= {
        "SERVER_HOST": "0.0.0.0",
        "SERVER_PORT": SERVER_PORT,
        "DEVICE": "cuda",
        "DTYPE": model.dtype,
        "MAX_BATCH_SIZE": model.max_batch_size,
        "MAX_QUEUE": model.max_queue,
        "MAX_MODEL_LEN": model.max_model_len,
        "DRAIN_TIMEOUT": lifecycle.drain_timeout_seconds,
        "TENSOR_PARALLEL_SIZE": pod.tensor_parallel_size,
        "HF_HOME": MODEL_CACHE_PATH,
        "HOME": "/tmp",
    }
    if pod.tensor_parallel_size > 1:
        values |= NCCL_ENVIRONMENT
    env = [k8s.core.v1.EnvVarArgs(name=key, value=str(value)) for key, value in values.items() if value is not None]
    if names.api_keys_secret is not None:
        env.append(
            k8s.core.v1.EnvVarArgs(
                name=API_KEYS_KEY,
                value_from=k8s.core.v1.EnvVarSourceArgs(
                    secret_key_ref=k8s.core.v1.SecretKeySelectorArgs(name=names.api_keys_secret, key=API_KEYS_KEY)
                ),
            )
        )
    return env


def _server(pod: ServerPodArgs, image: pulumi.Input[str], names: PodNames) -> k8s.core.v1.ContainerArgs:
    resources = pod.resources
    gpus = str(pod.gpu_count)

    def http_get(path: str) -> k8s.core.v1.HTTPGetActionArgs:
        return k8s.core.v1.HTTPGetActionArgs(path=path, port="http")

    return k8s.core.v1.ContainerArgs(
        name="server",
        image=image,
        # With a pinned tag or digest this only re-checks the manifest; it never runs a stale local copy.
        image_pull_policy="Always",
        command=["python", "-m", "app"],
        ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=SERVER_PORT, protocol="TCP")],
        env=environment(pod, names),
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests={"cpu": resources.cpu_request, "memory": resources.memory_request, GPU_RESOURCE: gpus},
            limits={"cpu": resources.cpu_limit, "memory": resources.memory_limit, GPU_RESOURCE: gpus},
        ),
        # Model download + load: /readyz turns 200 once the model is loaded; until then liveness is off.
        startup_probe=k8s.core.v1.ProbeArgs(
            http_get=http_get("/readyz"),
            period_seconds=_PROBE_PERIOD_SECONDS,
            timeout_seconds=5,
            failure_threshold=math.ceil(pod.startup_seconds / _PROBE_PERIOD_SECONDS),
        ),
        readiness_probe=k8s.core.v1.ProbeArgs(
            http_get=http_get("/readyz"), period_seconds=5, timeout_seconds=3, failure_threshold=2
        ),
        liveness_probe=k8s.core.v1.ProbeArgs(
            http_get=http_get("/healthz"), period_seconds=10, timeout_seconds=5, failure_threshold=3
        ),
        # Kubelet pauses before SIGTERM so load balancer and endpoints stop routing here; then the server drains
        # (DRAIN_TIMEOUT) within terminationGracePeriodSeconds = pause + drain + 5 s.
        lifecycle=k8s.core.v1.LifecycleArgs(
            pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                sleep=k8s.core.v1.SleepActionArgs(seconds=pod.lifecycle.pre_stop_sleep_seconds)
            )
        ),
        security_context=_security_context(),
        volume_mounts=_mounts(),
    )


def _s3_download(model: ModelConfig) -> k8s.core.v1.ContainerArgs:
    """Copies the S3 model prefix into the cache (incremental: a warm cache copies nothing)."""
    return k8s.core.v1.ContainerArgs(
        name="download-model",
        image=versions.AWS_CLI_IMAGE,
        image_pull_policy="Always",
        command=["aws", "s3", "sync", "--only-show-errors", model.s3_uri or "", S3_WEIGHTS_PATH],
        env=[k8s.core.v1.EnvVarArgs(name="HOME", value="/tmp")],
        resources=k8s.core.v1.ResourceRequirementsArgs(
            requests=dict(S3_DOWNLOAD_REQUESTS), limits={"cpu": "2", "memory": "2Gi"}
        ),
        security_context=_security_context(),
        volume_mounts=_mounts()[:2],
    )


def _mounts() -> list[k8s.core.v1.VolumeMountArgs]:
    return [
        k8s.core.v1.VolumeMountArgs(name="model-cache", mount_path=MODEL_CACHE_PATH),
        k8s.core.v1.VolumeMountArgs(name="tmp", mount_path="/tmp"),
        k8s.core.v1.VolumeMountArgs(name="dshm", mount_path="/dev/shm"),
    ]


def _volumes(cache: ModelCacheConfig, resources: ResourcesConfig) -> list[k8s.core.v1.VolumeArgs]:
    if cache.type == "emptyDir":
        model_cache = k8s.core.v1.VolumeArgs(
            name="model-cache", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit=cache.size)
        )
    elif cache.type == "ephemeral":
        model_cache = k8s.core.v1.VolumeArgs(
            name="model-cache",
            ephemeral=k8s.core.v1.EphemeralVolumeSourceArgs(
                volume_claim_template=k8s.core.v1.PersistentVolumeClaimTemplateArgs(
                    spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                        access_modes=["ReadWriteOnce"],
                        storage_class_name=cache.storage_class_name,
                        resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": cache.size}),
                    )
                )
            ),
        )
    else:
        model_cache = k8s.core.v1.VolumeArgs(
            name="model-cache",
            persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(
                claim_name=cache.claim_name or ""
            ),
        )
    return [
        model_cache,
        k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(size_limit="2Gi")),
        k8s.core.v1.VolumeArgs(
            name="dshm",
            empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(medium="Memory", size_limit=resources.shm_size),
        ),
    ]
