"""The stack program: config -> AWS platform (or an existing cluster) -> Kubernetes layer -> stack outputs."""

import pulumi
import pulumi_kubernetes as k8s
from stack.aws.platform import deploy_aws_platform, deploy_cluster_autoscaler
from stack.config import ConfigError, load_stack_config
from stack.kubernetes.layer import deploy_kubernetes_layer

try:
    config = load_stack_config()
except ConfigError as error:
    # The CLI prints a RunError's message alone, without a traceback.
    raise pulumi.RunError(str(error)) from None

depends_on: list[pulumi.Resource] = []
if config.cluster_source == "eks":
    platform = deploy_aws_platform(config)
    depends_on = platform.ready
    provider = k8s.Provider(
        "eks",
        kubeconfig=platform.cluster.kubeconfig,
        enable_server_side_apply=True,
        opts=pulumi.ResourceOptions(depends_on=depends_on),
    )
    if config.cluster_autoscaler.enabled:
        deploy_cluster_autoscaler(config, platform, provider)
    pulumi.export("clusterName", platform.cluster.name)
    pulumi.export("clusterEndpoint", platform.cluster.endpoint)
    pulumi.export("kubeconfig", platform.cluster.kubeconfig)
    pulumi.export("nodeGroupNames", platform.node_group_names)
    pulumi.export("vpcId", platform.network.vpc_id)
    pulumi.export("imageRepositoryUrl", platform.image_registry.repository_url)
else:
    assert config.kubeconfig is not None  # checked by load_stack_config
    provider = k8s.Provider("existing", kubeconfig=config.kubeconfig, enable_server_side_apply=True)

layer = deploy_kubernetes_layer(config, provider, depends_on)
for key, value in layer.exports().items():
    pulumi.export(key, value)
