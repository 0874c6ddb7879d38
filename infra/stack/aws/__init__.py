"""AWS ComponentResources, one per module: network, EKS cluster, node pools, IAM roles, registry, autoscaler."""
