"""A real Kubernetes control plane for the tests: kwok's fake nodes behind a real API server, scheduler and
controller manager, with the node pools' contract on every node."""
