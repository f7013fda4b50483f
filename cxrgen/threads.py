"""CPU threads that follow the CPUs the process was given, not the machine's core count.

On a shared node or in a Slurm allocation smaller than the machine, PyTorch's default intra-op thread count (the
machine's cores) oversubscribes the CPUs the job may use, and the many small operations of a decode step then wait
on each other. The count used here is the smallest of: the CPUs in the process's affinity mask, Slurm's
``SLURM_CPUS_PER_TASK`` when set, and the machine's core count.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("cxrgen")


def allotted_cpus(env: dict[str, str] | None = None) -> int:
    """CPUs this process may run on: affinity mask, ``SLURM_CPUS_PER_TASK``, core count (the smallest)."""
    env = os.environ if env is None else env
    counts = [os.cpu_count() or 1]
    if hasattr(os, "sched_getaffinity"):
        counts.append(len(os.sched_getaffinity(0)))
    slurm = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        counts.append(int(slurm))
    return max(1, min(counts))


def intra_op_threads(device_type: str, env: dict[str, str] | None = None) -> int:
    """Intra-op threads for a run on ``device_type``: the allotted CPUs on the CPU, at most 4 beside a GPU (the
    host only launches kernels and decodes images there)."""
    cpus = allotted_cpus(env)
    return cpus if device_type == "cpu" else min(cpus, 4)


def configure_threads(device) -> int:
    """Set torch's intra-op thread count for a run on ``device``; returns it. ``OMP_NUM_THREADS`` set by the user
    wins."""
    import torch

    if os.environ.get("OMP_NUM_THREADS", "").strip().isdigit():
        return torch.get_num_threads()
    threads = intra_op_threads(getattr(device, "type", str(device)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads
