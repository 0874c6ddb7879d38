"""The NVIDIA GPU instance types the GPU pools accept, their shape, and what a pod can use of one.

The config model reads this table to refuse pools the cluster-autoscaler cannot size (it builds a node group's
template from its *first* instance type, so every type of a pool must have one shape) and pools on which the
configured inference pod could never fit. x86_64 only: the pools use the AL2023_x86_64_NVIDIA AMI. Extend the
table when AWS adds a type (the EC2 instance type pages give vCPUs, memory and GPUs).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True)
class GpuInstanceShape:
    vcpus: int
    memory_gib: int
    gpus: int
    # The value of the `k8s.amazonaws.com/accelerator` node label (cluster-autoscaler's GPU label on AWS).
    accelerator: str

    @property
    def sizing(self) -> tuple[int, int, int]:
        """What the autoscaler's node template is made of: vCPUs, memory and GPUs."""
        return (self.vcpus, self.memory_gib, self.gpus)


def _family(family: str, accelerator: str, sizes: dict[str, tuple[int, int, int]]) -> dict[str, GpuInstanceShape]:
    return {f"{family}.{size}": GpuInstanceShape(*shape, accelerator) for size, shape in sizes.items()}


# vCPUs, memory (GiB) and GPUs of the sizes shared by g5 and g6 (g6 halves nothing: the same host shapes).
_G5_G6_SIZES = {
    "xlarge": (4, 16, 1),
    "2xlarge": (8, 32, 1),
    "4xlarge": (16, 64, 1),
    "8xlarge": (32, 128, 1),
    "16xlarge": (64, 256, 1),
    "12xlarge": (48, 192, 4),
    "24xlarge": (96, 384, 4),
    "48xlarge": (192, 768, 8),
}
# g4dn: the same shapes up to 16xlarge and 12xlarge, plus a metal size; g6e: the g5/g6 shapes with twice the memory.
_G4DN_SIZES = {
    **{size: _G5_G6_SIZES[size] for size in ("xlarge", "2xlarge", "4xlarge", "8xlarge", "16xlarge", "12xlarge")},
    "metal": (96, 384, 8),
}
_G6E_SIZES = {size: (cpus, memory * 2, gpus) for size, (cpus, memory, gpus) in _G5_G6_SIZES.items()}

GPU_INSTANCE_TYPES: dict[str, GpuInstanceShape] = {
    **_family("g4dn", "nvidia-tesla-t4", _G4DN_SIZES),
    **_family("g5", "nvidia-a10g", _G5_G6_SIZES),
    **_family("g6", "nvidia-l4", _G5_G6_SIZES),
    **_family("g6e", "nvidia-l40s", _G6E_SIZES),
    "gr6.4xlarge": GpuInstanceShape(16, 128, 1, "nvidia-l4"),
    "gr6.8xlarge": GpuInstanceShape(32, 256, 1, "nvidia-l4"),
    "p4d.24xlarge": GpuInstanceShape(96, 1152, 8, "nvidia-a100"),
    "p4de.24xlarge": GpuInstanceShape(96, 1152, 8, "nvidia-a100"),
    "p5.4xlarge": GpuInstanceShape(16, 256, 1, "nvidia-h100"),
    "p5.48xlarge": GpuInstanceShape(192, 2048, 8, "nvidia-h100"),
    "p5e.48xlarge": GpuInstanceShape(192, 2048, 8, "nvidia-h200"),
    "p5en.48xlarge": GpuInstanceShape(192, 2048, 8, "nvidia-h200"),
    "p6-b200.48xlarge": GpuInstanceShape(192, 2048, 8, "nvidia-b200"),
}

# What the daemons every GPU node runs ask for (vpc-cni, kube-proxy, the Pod Identity agent, the EBS CSI node
# plugin, the NVIDIA device plugin, the DCGM exporter, node-exporter): their chart and add-on requests add up to
# about 200m CPU and 300 MiB; rounded up so an add-on upgrade does not make a pod unschedulable overnight.
DAEMONSET_CPU = Decimal("0.3")
DAEMONSET_MEMORY_BYTES = Decimal(512 * 2**20)
# The kubelet's reservations on the EKS AL2023 AMIs (nodeadm): kube-reserved memory is 255 MiB + 11 MiB per pod
# the node may hold (110 at most, the worst case here), the hard eviction threshold 100 MiB; kube-reserved CPU is
# 6 % of the first core, 1 % of the second, 0.5 % of the next two and 0.25 % of every further core.
_MAX_PODS = 110
_EVICTION_MEMORY_BYTES = Decimal(100 * 2**20)


def allocatable(shape: GpuInstanceShape) -> tuple[Decimal, Decimal]:
    """CPU cores and memory bytes the kubelet offers to pods on a node of this shape (before daemonsets)."""
    reserved_memory = Decimal((255 + 11 * _MAX_PODS) * 2**20) + _EVICTION_MEMORY_BYTES
    cores = shape.vcpus
    reserved_cpu = (
        Decimal("0.06") * min(cores, 1)
        + Decimal("0.01") * min(max(cores - 1, 0), 1)
        + Decimal("0.005") * min(max(cores - 2, 0), 2)
        + Decimal("0.0025") * max(cores - 4, 0)
    )
    return Decimal(cores) - reserved_cpu, Decimal(shape.memory_gib * 2**30) - reserved_memory


def pod_fits(shape: GpuInstanceShape, cpu: Decimal, memory_bytes: Decimal, gpus: int) -> str | None:
    """None when a pod with these requests fits beside the daemonsets; otherwise what is short, in words."""
    cpu_free, memory_free = allocatable(shape)
    cpu_free -= DAEMONSET_CPU
    memory_free -= DAEMONSET_MEMORY_BYTES
    if gpus > shape.gpus:
        return f"asks for {gpus} GPUs but the type has {shape.gpus}"
    if cpu > cpu_free:
        return f"requests {cpu} CPU but about {cpu_free:.2f} is free for pods beside the daemonsets"
    if memory_bytes > memory_free:
        return (
            f"requests {memory_bytes / 2**30:.1f} GiB of memory but about {memory_free / 2**30:.1f} GiB is free "
            "for pods beside the daemonsets"
        )
    return None
