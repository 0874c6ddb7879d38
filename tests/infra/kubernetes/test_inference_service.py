"""InferenceService, as the whole program builds it for the dev stack (and a variant with every option on)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from stack.config.kubernetes import InferenceConfig
from stack.kubernetes import metrics
from stack.testing import ProgramRun

Objects = Callable[[ProgramRun, str], list[dict[str, Any]]]  # the `objects` fixture (conftest.py)

GPU = "nvidia.com/gpu"


def one(objects: Objects, run: ProgramRun, kind: str) -> dict[str, Any]:
    found = objects(run, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(objects: Objects, run: ProgramRun) -> dict[str, Any]:
    spec: dict[str, Any] = one(objects, run, "Deployment")["spec"]["template"]["spec"]
    return spec


def server(objects: Objects, run: ProgramRun) -> dict[str, Any]:
    container: dict[str, Any] = next(c for c in pod_spec(objects, run)["containers"] if c["name"] == "server")
    return container


def pod_labels(objects: Objects, run: ProgramRun) -> dict[str, str]:
    labels: dict[str, str] = one(objects, run, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(key) == value for key, value in selector.items())


def test_pods_tolerate_the_gpu_taint_and_need_gpu_nodes(objects: Objects, dev_run: ProgramRun) -> None:
    spec = pod_spec(objects, dev_run)
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]
    required = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["nodeSelectorTerms"] == [
        {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}
    ]


def test_server_requests_and_limits_the_configured_gpus(objects: Objects, dev_run: ProgramRun) -> None:
    resources = server(objects, dev_run)["resources"]
    assert resources["requests"][GPU] == resources["limits"][GPU] == "1"
    assert resources["requests"]["cpu"] == "2"
    assert resources["limits"]["cpu"] == "4"
    assert resources["requests"]["memory"] == "16Gi"
    assert resources["limits"]["memory"] == "32Gi"


def test_variant_requests_two_gpus(objects: Objects, variant_run: ProgramRun) -> None:
    assert server(objects, variant_run)["resources"]["limits"][GPU] == "2"


def test_pods_spread_across_zones(objects: Objects, dev_run: ProgramRun, variant_run: ProgramRun) -> None:
    for run, rule in ((dev_run, "ScheduleAnyway"), (variant_run, "DoNotSchedule")):
        zone = next(
            c
            for c in pod_spec(objects, run)["topologySpreadConstraints"]
            if c["topologyKey"] == "topology.kubernetes.io/zone"
        )
        assert zone["maxSkew"] == 1
        assert zone["whenUnsatisfiable"] == rule
        assert selects(zone["labelSelector"]["matchLabels"], pod_labels(objects, run))


def test_capacity_type_preference(
    objects: Objects, dev_run: ProgramRun, prod_run: ProgramRun, variant_run: ProgramRun
) -> None:
    for run, capacity in ((dev_run, "SPOT"), (prod_run, "ON_DEMAND")):
        preferred = pod_spec(objects, run)["affinity"]["nodeAffinity"][
            "preferredDuringSchedulingIgnoredDuringExecution"
        ]
        assert preferred == [
            {
                "weight": 100,
                "preference": {
                    "matchExpressions": [
                        {"key": "eks.amazonaws.com/capacityType", "operator": "In", "values": [capacity]}
                    ]
                },
            }
        ]
    # capacityType "any": no preference at all.
    assert (
        "preferredDuringSchedulingIgnoredDuringExecution"
        not in pod_spec(objects, variant_run)["affinity"]["nodeAffinity"]
    )


def test_probes_follow_the_server_contract(objects: Objects, dev_run: ProgramRun) -> None:
    container = server(objects, dev_run)
    assert container["command"] == ["python", "-m", "app"]
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = container["startupProbe"]
    # Sized for model loading: 20 minutes for the default model (7B, ~14 GiB).
    assert InferenceConfig().startup_seconds == 1200
    assert startup["periodSeconds"] * startup["failureThreshold"] >= InferenceConfig().startup_seconds
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_termination_grace_covers_pre_stop_pause_and_drain(objects: Objects, dev_run: ProgramRun) -> None:
    spec = pod_spec(objects, dev_run)
    container = server(objects, dev_run)
    pause = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain = int(next(env["value"] for env in container["env"] if env["name"] == "DRAIN_TIMEOUT"))
    assert pause > 0
    assert spec["terminationGracePeriodSeconds"] > pause + drain


def test_restricted_security_context(objects: Objects, dev_run: ProgramRun) -> None:
    spec = pod_spec(objects, dev_run)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    context = server(objects, dev_run)["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == 10001
    assert context["allowPrivilegeEscalation"] is False
    assert context["readOnlyRootFilesystem"] is True
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}


def test_writable_paths_are_volumes(objects: Objects, dev_run: ProgramRun) -> None:
    volumes = {volume["name"]: volume for volume in pod_spec(objects, dev_run)["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in server(objects, dev_run)["volumeMounts"]}
    assert mounts == {"/models": "model-cache", "/tmp": "tmp", "/dev/shm": "dshm"}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    assert volumes["model-cache"]["emptyDir"]["sizeLimit"] == "60Gi"


def test_s3_model_source_and_ephemeral_cache(objects: Objects, variant_run: ProgramRun) -> None:
    spec = pod_spec(objects, variant_run)
    (init,) = spec["initContainers"]
    assert init["command"][:3] == ["aws", "s3", "sync"]
    assert "s3://models-bucket/deepseek/r1-distill-qwen-14b/" in init["command"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    env = {item["name"]: item.get("value") for item in server(objects, variant_run)["env"]}
    assert env["MODEL"] == "/models/weights"
    assert env["SERVED_MODEL_NAME"] == "r1-distill-qwen-14b"
    cache = next(volume for volume in spec["volumes"] if volume["name"] == "model-cache")
    claim = cache["ephemeral"]["volumeClaimTemplate"]["spec"]
    assert claim["storageClassName"] == "gp3"
    assert claim["resources"]["requests"]["storage"] == "100Gi"
    # A cluster this stack creates grants S3 access through Pod Identity, not an IRSA annotation.
    account = one(objects, variant_run, "ServiceAccount")
    assert "annotations" not in account["metadata"]


def test_service_is_a_load_balancer_selecting_the_pods(objects: Objects, dev_run: ProgramRun) -> None:
    service = one(objects, dev_run, "Service")
    assert service["spec"]["type"] == "LoadBalancer"
    assert selects(service["spec"]["selector"], pod_labels(objects, dev_run))
    assert service["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert service["spec"]["loadBalancerSourceRanges"] == ["203.0.113.0/24"]
    assert service["metadata"]["annotations"]["service.beta.kubernetes.io/aws-load-balancer-type"] == "nlb"


def test_load_balancer_scheme_is_always_set(objects: Objects, dev_run: ProgramRun, variant_run: ProgramRun) -> None:
    # The AWS Load Balancer Controller's webhook defaults a Service without it to an internal NLB.
    for run, scheme in ((dev_run, "internet-facing"), (variant_run, "internal")):
        annotations = one(objects, run, "Service")["metadata"]["annotations"]
        assert annotations["service.beta.kubernetes.io/aws-load-balancer-scheme"] == scheme


def test_internal_tls_load_balancer(objects: Objects, variant_run: ProgramRun) -> None:
    service = one(objects, variant_run, "Service")
    annotations = service["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-internal"] == "true"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-cert"].startswith("arn:aws:acm:")
    assert service["spec"]["ports"][0]["port"] == 443
    assert service["spec"]["loadBalancerSourceRanges"] == ["198.51.100.0/24"]


def test_hpa_scales_the_deployment_on_in_flight_requests(objects: Objects, dev_run: ProgramRun) -> None:
    hpa = one(objects, dev_run, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    deployment = one(objects, dev_run, "Deployment")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 2)
    assert hpa["spec"]["metrics"] == [
        {
            "type": "Pods",
            "pods": {"metric": {"name": metrics.IN_FLIGHT}, "target": {"type": "AverageValue", "averageValue": "8"}},
        }
    ]
    behavior = hpa["spec"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    # The HPA owns the replica count.
    assert "replicas" not in deployment["spec"]


@pytest.mark.parametrize("run_name", ["dev_run", "prod_run", "variant_run"])
def test_no_hpa_uses_a_resource_metric_on_gpus(objects: Objects, run_name: str, request: pytest.FixtureRequest) -> None:
    run: ProgramRun = request.getfixturevalue(run_name)
    for hpa in objects(run, "HorizontalPodAutoscaler"):
        for metric in hpa["spec"]["metrics"]:
            assert metric["type"] != "Resource", "the resource metrics API serves only cpu and memory"
            assert metric["type"] in {"Pods", "Object", "External"}


def test_quota_caps_gpus(objects: Objects, dev_run: ProgramRun, variant_run: ProgramRun) -> None:
    # maxReplicas + 1 surge pod during a rollout, times GPUs per pod.
    for run, gpus in ((dev_run, 3), (variant_run, 14)):
        hard = one(objects, run, "ResourceQuota")["spec"]["hard"]
        assert hard["requests.nvidia.com/gpu"] == str(gpus)
        assert hard["services.loadbalancers"] == "1"
        assert {"requests.cpu", "limits.cpu", "requests.memory", "limits.memory", "pods"} <= set(hard)
    # dev: the default 2-4 CPUs and 16-32 Gi per pod, maxReplicas 2 + 1 surge pod.
    assert one(objects, dev_run, "ResourceQuota")["spec"]["hard"] == {
        "requests.nvidia.com/gpu": "3",
        "requests.cpu": "6",
        "limits.cpu": "12",
        "requests.memory": "48Gi",
        "limits.memory": "96Gi",
        "pods": "3",
        "services.loadbalancers": "1",
    }
    assert one(objects, dev_run, "LimitRange")["spec"]["limits"][0]["type"] == "Container"


def test_priority_class_is_used(objects: Objects, dev_run: ProgramRun) -> None:
    priority_class = one(objects, dev_run, "PriorityClass")
    assert pod_spec(objects, dev_run)["priorityClassName"] == priority_class["metadata"]["name"]
    assert priority_class["globalDefault"] is False
    assert priority_class["value"] == 100_000


def test_pdb_selects_the_pods_and_never_blocks_a_drain(objects: Objects, dev_run: ProgramRun) -> None:
    pdb = one(objects, dev_run, "PodDisruptionBudget")
    assert selects(pdb["spec"]["selector"]["matchLabels"], pod_labels(objects, dev_run))
    assert pdb["spec"]["maxUnavailable"] == 1
    assert "minAvailable" not in pdb["spec"]
    assert pdb["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"


def test_namespace_is_pod_security_restricted(objects: Objects, dev_run: ProgramRun) -> None:
    namespace = next(ns for ns in objects(dev_run, "Namespace") if ns["metadata"]["name"] == "deepseek-inference")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_api_keys_reach_the_server_from_a_secret(objects: Objects, dev_run: ProgramRun) -> None:
    secret = one(objects, dev_run, "Secret")
    assert secret["metadata"]["name"] == "deepseek-api-keys"
    assert set(secret["stringData"]) == {"API_KEYS"}
    env = next(item for item in server(objects, dev_run)["env"] if item["name"] == "API_KEYS")
    assert env["valueFrom"]["secretKeyRef"] == {"name": "deepseek-api-keys", "key": "API_KEYS"}


def test_network_policy_admits_clients_and_prometheus_only(objects: Objects, variant_run: ProgramRun) -> None:
    policy = one(objects, variant_run, "NetworkPolicy")
    assert selects(policy["spec"]["podSelector"]["matchLabels"], pod_labels(objects, variant_run))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    clients, scrapes = policy["spec"]["ingress"]
    assert [peer["ipBlock"]["cidr"] for peer in clients["from"]] == ["198.51.100.0/24", "10.20.0.0/16"]
    assert scrapes["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
            "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
        }
    ]
    for rule in (clients, scrapes):
        assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_service_monitor_scrapes_the_metrics_endpoint(objects: Objects, dev_run: ProgramRun) -> None:
    monitor = one(objects, dev_run, "ServiceMonitor")
    service = one(objects, dev_run, "Service")
    assert selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["spec"]["endpoints"] == [
        {"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
    ]


def test_alerts_cover_latency_queue_gpu_and_readiness(objects: Objects, dev_run: ProgramRun) -> None:
    rule = one(objects, dev_run, "PrometheusRule")
    alerts = {alert["alert"]: alert for group in rule["spec"]["groups"] for alert in group["rules"]}
    assert set(alerts) == {
        "DeepSeekLatencyP99High",
        "DeepSeekQueueGrowing",
        "DeepSeekGpuIdle",
        "DeepSeekGpuSaturated",
        "DeepSeekPodsNotReady",
    }
    assert "histogram_quantile(0.99" in alerts["DeepSeekLatencyP99High"]["expr"]
    assert alerts["DeepSeekLatencyP99High"]["expr"].endswith("> 0.2")
    assert metrics.WAITING in alerts["DeepSeekQueueGrowing"]["expr"]
    assert metrics.GPU_UTIL in alerts["DeepSeekGpuIdle"]["expr"]
    assert 'deployment="deepseek"' in alerts["DeepSeekPodsNotReady"]["expr"]
    for alert in alerts.values():
        assert 'namespace="deepseek-inference"' in alert["expr"]


def test_prod_stack_sizes(objects: Objects, prod_run: ProgramRun) -> None:
    hpa = one(objects, prod_run, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 12)
    assert hpa["metrics"][0]["pods"]["target"]["averageValue"] == "16"
    assert one(objects, prod_run, "ResourceQuota")["spec"]["hard"]["requests.nvidia.com/gpu"] == "13"
    assert server(objects, prod_run)["resources"]["limits"]["memory"] == "48Gi"
    assert any(env["name"] == "API_KEYS" for env in server(objects, prod_run)["env"])


def test_the_server_is_told_its_tensor_parallel_size_and_every_variable_is_a_server_setting(
    objects: Objects, dev_run: ProgramRun
) -> None:
    """The pod's environment is read by app.settings: each name the stack sets is one of its options (beside the
    process's own HF_HOME, HOME and NCCL's), and one GPU per pod means one rank, without NCCL settings."""
    from app.settings import OPTIONS

    env = {item["name"]: item.get("value") for item in server(objects, dev_run)["env"]}
    assert env["TENSOR_PARALLEL_SIZE"] == "1"
    assert not [name for name in env if name.startswith("NCCL_")]
    known = {option.env for option in OPTIONS} | {"HF_HOME", "HOME"}
    assert set(env) - known == set()


def test_several_gpus_make_as_many_ranks_with_nccl_settings() -> None:
    from stack.kubernetes.inference_pod import NCCL_ENVIRONMENT, PodNames, ServerPodArgs, environment

    for config, ranks in ((InferenceConfig(gpu_count=8), 8), (InferenceConfig(gpu_count=8, tensor_parallel_size=4), 4)):
        pod = ServerPodArgs(
            config.gpu_count,
            config.model,
            config.resources,
            config.model_cache,
            config.scheduling,
            config.lifecycle,
            config.startup_seconds,
            tensor_parallel_size=config.ranks,
        )
        env = {item.name: item.value for item in environment(pod, PodNames("sa", "pc", None))}
        assert env["TENSOR_PARALLEL_SIZE"] == str(ranks)
        assert NCCL_ENVIRONMENT.items() <= env.items()
