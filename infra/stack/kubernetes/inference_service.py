"""InferenceService: one model deployment — namespace and guard rails, server, load balancer, autoscaling, alerts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import pulumi
import pulumi_kubernetes as k8s

from stack.config.kubernetes import AutoscalingConfig, ServiceConfig, scale_quantity
from stack.kubernetes import metrics
from stack.kubernetes.common import (
    MANAGED_BY,
    NAMESPACE_NAME_LABEL,
    SERVER_PORT,
    checkov_skips,
)
from stack.kubernetes.inference_alerts import alert_rules
from stack.kubernetes.inference_pod import API_KEYS_KEY, PodNames, ServerPodArgs, pod_template
from stack.kubernetes.rollout import RolloutBudget, minutes
from stack.nodes import GPU_RESOURCE

# Service await: only the load balancer's address. The provider's default also waits for ready endpoints, i.e. for
# a GPU pod to load its model, and fails the update after 10 minutes while that is still under way.
LOAD_BALANCER_AWAIT = "jsonpath={.status.loadBalancer.ingress}"


@dataclass(frozen=True)
class InferenceServiceArgs:
    # Name of the Deployment, Service, HPA and the rest, and their namespace (DNS labels, validated).
    name: str
    namespace: str
    # The server image: the one built in this run (by digest) or the stack's prebuilt `inference.image`.
    image: pulumi.Input[str]
    # False for a prebuilt image pinned by tag (checkov's digest rule is then skipped with the reason).
    image_by_digest: bool
    pod: ServerPodArgs
    autoscaling: AutoscalingConfig
    service: ServiceConfig
    # Refuse to be built without API keys (production stacks).
    require_api_keys: bool
    # An IAM role for the pods' ServiceAccount (IRSA; existing clusters only).
    service_account_role_arn: str | None
    # How long a new GPU node may take to join (the autoscaler's maxNodeProvisionTime): part of the await budget.
    node_provision_seconds: int
    # Comma-separated API keys (a Pulumi secret); None = open endpoint, refused when require_api_keys
    # (load_stack_config already refused an empty secret there).
    api_keys: pulumi.Input[str] | None
    # Where Prometheus runs (its pods may scrape the server port).
    monitoring_namespace: str
    prometheus_pod_labels: dict[str, str]
    # Extra labels on the ServiceMonitor and PrometheusRule (an existing Prometheus' selectors).
    monitor_labels: dict[str, str] = field(default_factory=dict)
    # The monitoring stack's releases: CRDs for ServiceMonitor/PrometheusRule, the adapter for the HPA's metric.
    depends_on: Sequence[pulumi.Resource] = field(default_factory=tuple)


class InferenceService(pulumi.ComponentResource):
    namespace: pulumi.Output[str]
    service_name: pulumi.Output[str]
    endpoint: pulumi.Output[str]

    def __init__(self, name: str, args: InferenceServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:kubernetes:InferenceService", name, None, opts)
        if args.api_keys is None and args.require_api_keys:
            raise ValueError(f"InferenceService {name}: inference.requireApiKeys is true but no API keys were given")
        child = pulumi.ResourceOptions(parent=self)
        ns = args.namespace
        selector = {"app.kubernetes.io/name": "deepseek-inference", "app.kubernetes.io/instance": args.name}
        labels = {**MANAGED_BY, **selector, "app.kubernetes.io/component": "server"}

        def meta(
            object_name: str, annotations: dict[str, str] | None = None, extra_labels: dict[str, str] | None = None
        ) -> k8s.meta.v1.ObjectMetaArgs:
            return k8s.meta.v1.ObjectMetaArgs(
                name=object_name, namespace=ns, labels={**labels, **(extra_labels or {})}, annotations=annotations
            )

        restricted = {f"pod-security.kubernetes.io/{mode}": "restricted" for mode in ("enforce", "audit", "warn")}
        namespace = k8s.core.v1.Namespace(
            f"{name}-namespace",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=ns, labels={**MANAGED_BY, **restricted}),
            opts=child,
        )
        in_ns = pulumi.ResourceOptions(parent=self, depends_on=[namespace])

        self._guard_rails(name, args, meta, in_ns)
        priority_class = k8s.scheduling.v1.PriorityClass(
            f"{name}-priority",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=f"{args.name}-inference", labels=labels),
            value=args.pod.scheduling.priority,
            global_default=False,
            preemption_policy="PreemptLowerPriority",
            description=f"DeepSeek inference server {args.name}: may preempt batch work for GPUs",
            opts=child,
        )
        sa_annotations = (
            {"eks.amazonaws.com/role-arn": args.service_account_role_arn} if args.service_account_role_arn else None
        )
        service_account = k8s.core.v1.ServiceAccount(
            f"{name}-service-account",
            metadata=meta(args.name, sa_annotations),
            automount_service_account_token=False,
            opts=in_ns,
        )
        secret_name: str | None = None
        depends: list[pulumi.Resource] = [namespace, priority_class, service_account]
        if args.api_keys is not None:
            secret_name = f"{args.name}-api-keys"
            depends.append(
                k8s.core.v1.Secret(
                    f"{name}-api-keys",
                    metadata=meta(secret_name),
                    type="Opaque",
                    string_data={API_KEYS_KEY: args.api_keys},
                    opts=pulumi.ResourceOptions(
                        parent=self, depends_on=[namespace], additional_secret_outputs=["stringData"]
                    ),
                )
            )
        names = PodNames(
            service_account=args.name, priority_class=f"{args.name}-inference", api_keys_secret=secret_name
        )
        skips = {"CKV_K8S_35": "the server reads API_KEYS from its environment by contract (app/settings.py)"}
        if not args.image_by_digest:
            skips["CKV_K8S_43"] = "the config model refuses 'latest' and untagged images; pin a digest to drop this"
        pod_annotations = checkov_skips(**skips)
        budget = RolloutBudget(
            node_provision_seconds=args.node_provision_seconds,
            startup_seconds=args.pod.startup_seconds,
            termination_grace_seconds=args.pod.lifecycle.termination_grace_period_seconds,
            max_replicas=args.autoscaling.max_replicas,
        )
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta(args.name, pod_annotations),
            spec=k8s.apps.v1.DeploymentSpecArgs(
                # No replicas: the HPA owns the count (Pulumi would reset it on every update otherwise).
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                strategy=k8s.apps.v1.DeploymentStrategyArgs(
                    type="RollingUpdate",
                    # Keep serving capacity during a rollout: one extra pod (one more GPU) at a time.
                    rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(max_surge=1, max_unavailable=0),
                ),
                revision_history_limit=5,
                progress_deadline_seconds=budget.progress_deadline_seconds,
                template=pod_template(args.pod, args.image, labels, names, pod_annotations),
            ),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=depends,
                custom_timeouts=pulumi.CustomTimeouts(
                    create=minutes(budget.create_timeout_seconds), update=minutes(budget.update_timeout_seconds)
                ),
            ),
        )
        self.service = self._service(name, args, meta, selector, in_ns)
        self._autoscaling(name, args, meta, selector)
        self._network_policy(name, args, meta, selector, in_ns)
        self._observability(name, args, meta, selector, namespace)

        self.namespace = namespace.metadata.apply(lambda metadata: metadata.name or ns)
        self.service_name = pulumi.Output.from_input(args.name)
        self.endpoint = self.service.status.apply(_load_balancer_host)
        self.register_outputs(
            {"namespace": self.namespace, "serviceName": self.service_name, "endpoint": self.endpoint}
        )

    def _guard_rails(self, name: str, args: InferenceServiceArgs, meta: _Meta, opts: pulumi.ResourceOptions) -> None:
        """Quota sized for maxReplicas + 1 surge pod during a rollout; defaults for containers that set nothing."""
        pods = args.autoscaling.max_replicas + 1
        resources = args.pod.resources

        def times(quantity: str) -> str:
            return scale_quantity(quantity, pods)

        k8s.core.v1.ResourceQuota(
            f"{name}-quota",
            metadata=meta(f"{args.name}-quota"),
            spec=k8s.core.v1.ResourceQuotaSpecArgs(
                hard={
                    f"requests.{GPU_RESOURCE}": str(args.pod.gpu_count * pods),
                    "requests.cpu": times(resources.cpu_request),
                    "limits.cpu": times(resources.cpu_limit),
                    "requests.memory": times(resources.memory_request),
                    "limits.memory": times(resources.memory_limit),
                    "pods": str(pods),
                    "services.loadbalancers": "1",
                }
            ),
            opts=opts,
        )
        k8s.core.v1.LimitRange(
            f"{name}-limits",
            metadata=meta(f"{args.name}-limits"),
            spec=k8s.core.v1.LimitRangeSpecArgs(
                limits=[
                    k8s.core.v1.LimitRangeItemArgs(
                        type="Container",
                        default_request={"cpu": "100m", "memory": "128Mi"},
                        default={"cpu": "500m", "memory": "512Mi"},
                    )
                ]
            ),
            opts=opts,
        )

    def _service(
        self, name: str, args: InferenceServiceArgs, meta: _Meta, selector: dict[str, str], opts: pulumi.ResourceOptions
    ) -> k8s.core.v1.Service:
        service = args.service
        annotations = {
            # An NLB from the cloud provider (see docs/deploy/kubernetes-layer.md for why not the LB Controller).
            "service.beta.kubernetes.io/aws-load-balancer-type": "nlb",
            "service.beta.kubernetes.io/aws-load-balancer-cross-zone-load-balancing-enabled": "true",
            # Read by the AWS Load Balancer Controller, whose webhook takes over LoadBalancer Services where it runs
            # and defaults to internal; the in-tree controller ignores it and reads the `internal` annotation.
            "service.beta.kubernetes.io/aws-load-balancer-scheme": (
                "internal" if service.internal else "internet-facing"
            ),
            "pulumi.com/waitFor": LOAD_BALANCER_AWAIT,
        }
        port = 80
        if service.internal:
            annotations["service.beta.kubernetes.io/aws-load-balancer-internal"] = "true"
        if service.tls_certificate_arn is not None:
            port = 443
            annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-cert"] = service.tls_certificate_arn
            annotations["service.beta.kubernetes.io/aws-load-balancer-ssl-ports"] = "443"
        return k8s.core.v1.Service(
            f"{name}-service",
            metadata=meta(args.name, annotations),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="LoadBalancer",
                selector=selector,
                ports=[k8s.core.v1.ServicePortArgs(name="http", port=port, target_port="http", protocol="TCP")],
                load_balancer_source_ranges=list(service.load_balancer_source_ranges),
                # Only nodes running a ready pod get traffic, and pods see the client's address (NetworkPolicy).
                external_traffic_policy="Local",
            ),
            opts=opts,
        )

    def _autoscaling(self, name: str, args: InferenceServiceArgs, meta: _Meta, selector: dict[str, str]) -> None:
        scaling = args.autoscaling
        # Not after the Deployment: both name it only, and a Deployment whose pods are still loading (or whose
        # await timed out) must not keep the HPA and PDB from existing.
        after = pulumi.ResourceOptions(parent=self, depends_on=list(args.depends_on))
        k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata=meta(args.name),
            spec=k8s.autoscaling.v2.HorizontalPodAutoscalerSpecArgs(
                scale_target_ref=k8s.autoscaling.v2.CrossVersionObjectReferenceArgs(
                    api_version="apps/v1", kind="Deployment", name=args.name
                ),
                min_replicas=scaling.min_replicas,
                max_replicas=scaling.max_replicas,
                # Waiting + running requests per pod from prometheus-adapter. Never a Resource metric on
                # nvidia.com/gpu: the resource metrics API serves only cpu and memory.
                metrics=[
                    k8s.autoscaling.v2.MetricSpecArgs(
                        type="Pods",
                        pods=k8s.autoscaling.v2.PodsMetricSourceArgs(
                            metric=k8s.autoscaling.v2.MetricIdentifierArgs(name=metrics.IN_FLIGHT),
                            target=k8s.autoscaling.v2.MetricTargetArgs(
                                type="AverageValue", average_value=str(scaling.target_requests_per_pod)
                            ),
                        ),
                    )
                ],
                behavior=k8s.autoscaling.v2.HorizontalPodAutoscalerBehaviorArgs(
                    scale_up=k8s.autoscaling.v2.HPAScalingRulesArgs(
                        stabilization_window_seconds=0,
                        select_policy="Max",
                        policies=[
                            k8s.autoscaling.v2.HPAScalingPolicyArgs(type="Percent", value=100, period_seconds=60),
                            k8s.autoscaling.v2.HPAScalingPolicyArgs(type="Pods", value=2, period_seconds=60),
                        ],
                    ),
                    scale_down=k8s.autoscaling.v2.HPAScalingRulesArgs(
                        stabilization_window_seconds=scaling.scale_down_stabilization_seconds,
                        select_policy="Min",
                        policies=[k8s.autoscaling.v2.HPAScalingPolicyArgs(type="Pods", value=1, period_seconds=300)],
                    ),
                ),
            ),
            opts=after,
        )
        # One pod at a time may go, whatever the replica count (so a drain never blocks), and a pod that is not
        # ready (stuck loading) can always be evicted.
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=meta(args.name),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=1,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
            opts=after,
        )

    def _network_policy(
        self, name: str, args: InferenceServiceArgs, meta: _Meta, selector: dict[str, str], opts: pulumi.ResourceOptions
    ) -> None:
        """Ingress only to the server port: from client CIDRs (via the NLB, client IPs kept) and from Prometheus."""
        cidrs = [*args.service.load_balancer_source_ranges, *args.service.extra_client_cidrs]
        server_port = [k8s.networking.v1.NetworkPolicyPortArgs(port=SERVER_PORT, protocol="TCP")]
        k8s.networking.v1.NetworkPolicy(
            f"{name}-network-policy",
            metadata=meta(args.name),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                policy_types=["Ingress"],
                ingress=[
                    k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                        from_=[
                            k8s.networking.v1.NetworkPolicyPeerArgs(ip_block=k8s.networking.v1.IPBlockArgs(cidr=cidr))
                            for cidr in dict.fromkeys(cidrs)
                        ],
                        ports=server_port,
                    ),
                    k8s.networking.v1.NetworkPolicyIngressRuleArgs(
                        from_=[
                            k8s.networking.v1.NetworkPolicyPeerArgs(
                                namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                                    match_labels={NAMESPACE_NAME_LABEL: args.monitoring_namespace}
                                ),
                                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=args.prometheus_pod_labels),
                            )
                        ],
                        ports=server_port,
                    ),
                ],
            ),
            opts=opts,
        )

    def _observability(
        self,
        name: str,
        args: InferenceServiceArgs,
        meta: _Meta,
        selector: dict[str, str],
        namespace: k8s.core.v1.Namespace,
    ) -> None:
        after_crds = pulumi.ResourceOptions(parent=self, depends_on=[namespace, *args.depends_on])
        monitor_meta = meta(args.name, extra_labels=args.monitor_labels)
        k8s.apiextensions.CustomResource(
            f"{name}-service-monitor",
            api_version="monitoring.coreos.com/v1",
            kind="ServiceMonitor",
            metadata=monitor_meta,
            spec={
                "selector": {"matchLabels": selector},
                "namespaceSelector": {"matchNames": [args.namespace]},
                "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}],
            },
            opts=after_crds,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-alerts",
            api_version="monitoring.coreos.com/v1",
            kind="PrometheusRule",
            metadata=monitor_meta,
            spec=alert_rules(args.namespace, args.name, args.pod.startup_seconds),
            opts=after_crds,
        )


class _Meta(Protocol):
    """The `meta` helper made in __init__: metadata in this service's namespace, with its labels."""

    def __call__(
        self, object_name: str, annotations: dict[str, str] | None = None, extra_labels: dict[str, str] | None = None
    ) -> k8s.meta.v1.ObjectMetaArgs: ...


def _load_balancer_host(status: k8s.core.v1.outputs.ServiceStatus | None) -> str:
    """The NLB's DNS name ("" until AWS has made it, and always under mocks)."""
    ingress = status.load_balancer.ingress if status and status.load_balancer else None
    if not ingress:
        return ""
    return ingress[0].hostname or ingress[0].ip or ""
