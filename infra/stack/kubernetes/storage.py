"""ClusterStorage: the default StorageClass of an EKS cluster this stack creates (encrypted gp3 through the EBS CSI
driver). EKS marks no StorageClass default since 1.30, so without it Prometheus' volume and `ephemeral` model
caches would stay Pending. Existing clusters keep their own default."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from stack.kubernetes.common import MANAGED_BY

GP3 = "gp3"


class ClusterStorage(pulumi.ComponentResource):
    storage_class: pulumi.Output[str]

    def __init__(self, name: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("deepseek:kubernetes:ClusterStorage", name, None, opts)
        storage_class = k8s.storage.v1.StorageClass(
            f"{name}-gp3",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=GP3,
                labels=MANAGED_BY,
                annotations={"storageclass.kubernetes.io/is-default-class": "true"},
            ),
            provisioner="ebs.csi.aws.com",
            parameters={"type": "gp3", "encrypted": "true", "fsType": "ext4"},
            # Bind where the pod lands (its zone), and let volumes grow (Prometheus retention).
            volume_binding_mode="WaitForFirstConsumer",
            allow_volume_expansion=True,
            reclaim_policy="Delete",
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.storage_class = storage_class.metadata.apply(lambda metadata: metadata.name or GP3)
        self.register_outputs({"storageClass": self.storage_class})
