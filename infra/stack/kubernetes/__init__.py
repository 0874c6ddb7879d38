"""Kubernetes ComponentResources: GPU add-ons, the monitoring stack and one InferenceService per model.

`layer.deploy_kubernetes_layer` builds them all on a given `k8s.Provider` (an EKS cluster's, or one made from the
kubeconfig of an existing cluster).
"""
