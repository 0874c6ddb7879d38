"""The layer's wiring: provider, existing-cluster mode, outputs."""

from __future__ import annotations

from stack.testing import ProgramRun

KUBERNETES_KINDS = ("Deployment", "Service", "HorizontalPodAutoscaler", "ResourceQuota", "PodDisruptionBudget")


def test_existing_cluster_creates_no_aws_resources(existing_run: ProgramRun) -> None:
    aws = [f"{r.type} {r.name}" for r in existing_run.resources if r.type.startswith(("aws:", "deepseek:aws:"))]
    assert aws == []
    providers = existing_run.of_type("pulumi:providers:kubernetes")
    assert [p.name for p in providers] == ["existing"]
    for kind in KUBERNETES_KINDS:
        assert any(r.type.endswith(f":{kind}") for r in existing_run.resources), kind
    assert len(existing_run.of_type("kubernetes:helm.sh/v3:Release")) == 4


def test_eks_stack_creates_aws_resources(dev_run: ProgramRun) -> None:
    # The contrast to the test above: the switch, not an empty program, is what removes them.
    assert any(r.type == "aws:eks/cluster:Cluster" for r in dev_run.resources)


def test_every_kubernetes_resource_uses_the_stack_provider(dev_run: ProgramRun, existing_run: ProgramRun) -> None:
    for run, provider in ((dev_run, "eks"), (existing_run, "existing")):
        ours = [r for r in run.resources if r.type.startswith("kubernetes:")]
        assert ours
        for resource in ours:
            assert resource.provider is not None, resource.name
            assert f"pulumi:providers:kubernetes::{provider}::" in resource.provider, resource.name


def test_components_are_registered(dev_run: ProgramRun) -> None:
    components = {r.type for r in dev_run.resources if r.type.startswith("deepseek:kubernetes:")}
    assert components == {
        "deepseek:kubernetes:Monitoring",
        "deepseek:kubernetes:GpuAddons",
        "deepseek:kubernetes:InferenceService",
        "deepseek:kubernetes:ClusterStorage",
    }


def test_eks_clusters_get_a_default_encrypted_gp3_storage_class(dev_run: ProgramRun, existing_run: ProgramRun) -> None:
    (storage_class,) = [r.inputs for r in dev_run.of_type("kubernetes:storage.k8s.io/v1:StorageClass")]
    assert storage_class["provisioner"] == "ebs.csi.aws.com"
    assert storage_class["parameters"] == {"type": "gp3", "encrypted": "true", "fsType": "ext4"}
    assert storage_class["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"] == "true"
    assert storage_class["volumeBindingMode"] == "WaitForFirstConsumer"
    # An existing cluster keeps its own default.
    assert existing_run.of_type("kubernetes:storage.k8s.io/v1:StorageClass") == []


def test_stack_exports_the_layer_outputs(dev_run: ProgramRun, existing_run: ProgramRun) -> None:
    for run in (dev_run, existing_run):
        assert run.outputs["inferenceNamespace"] == "deepseek-inference"
        assert run.outputs["monitoringNamespace"] == "monitoring"
        assert run.outputs["grafanaService"] == "grafana"
        # The NLB's DNS name, once AWS has made it: empty under mocks (no Service status).
        assert run.outputs["inferenceEndpoint"] == ""
