"""What the machine can do, as torch sees it: the defaults that follow the hardware read it here, once.

On a CPU, bfloat16 matrix products run in hardware only with AVX512-BF16 or AMX; elsewhere (AVX2-only CPUs, many
cloud AMD and older Intel parts) torch emulates them, and a bf16 model runs several times slower than the same model
in float32 (measured: bench/results/cpu-defaults-*.txt). The benchmark prints `describe()` beside every figure.
"""

from __future__ import annotations

import os
import platform
from functools import cache
from pathlib import Path

import torch


def cpu_count() -> int:
    """The cores this process may run on (its affinity, e.g. a container's CPU set), not the host's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def available_memory() -> int:
    """Bytes of memory the machine could give now without swapping (the kernel's MemAvailable)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def cpu_capability() -> str:
    """The widest vector instruction set torch's CPU kernels use here: AVX2, AVX512, NO AVX, SVE256 …"""
    return str(torch.backends.cpu.get_cpu_capability())


@cache
def cpu_has_native_bf16() -> bool:
    """True when bf16 matrix products run in hardware: AVX512-BF16 or AMX tiles on x86 (torch's own checks, or the
    kernel's CPU flags where this torch lacks them), the BF16 extension on Arm (e.g. Graviton3 and later)."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if any(check is not None and bool(check()) for check in checks):
        return True
    return bool({"avx512_bf16", "amx_bf16", "bf16"} & _cpu_flags())


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            return set(line.split(":", 1)[1].split())
    return set()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe() -> str:
    """One line naming the hardware a figure was measured on."""
    bf16 = "native bf16" if cpu_has_native_bf16() else "bf16 emulated"
    line = f"CPU {_cpu_model()}, {cpu_count()} cores, {cpu_capability()}, {bf16}, torch {torch.__version__}"
    if torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}"
    return line
