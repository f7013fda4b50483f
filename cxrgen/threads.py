"""CPU threads that follow the CPUs the process was given, not the machine's core count.

On a shared node or in a Slurm allocation smaller than the machine, PyTorch's default intra-op thread count (the
machine's cores) oversubscribes the CPUs the job may use, and the many small operations of a decode step then wait
on each other. The CPUs a process may use (:func:`allotted_cpus`) are the smallest of: the CPUs in its affinity
mask, Slurm's ``SLURM_CPUS_PER_TASK`` when set, the cgroup CPU quota (``cpu.max``, as ``docker --cpus`` sets it)
and the machine's core count.

Intra-op threads (:func:`intra_op_threads`): one fewer than the allotted CPUs, at least 1 (so 1 on a 2-CPU
machine), and at most 4 beside a GPU. The reason is measured (bench/bench_threads.py, bench/RESULTS.md "CPU
threads"): a decode step is hundreds of small operations, each a parallel region whose threads must all arrive
before the next begins. When one of those threads shares its core with anything else (another job, the image
workers, a neighbour on a shared node), every region waits for a scheduler time slice: on the 2-CPU development
machine, 2 threads with one busy process beside them decoded 40x slower than 1 thread (31 against 0.8 ms per
step), and even "quiet" runs with 2 threads varied from 0.6 to 12 ms per step with the ordinary background load,
while 1 thread stayed at 0.7-0.8 ms. The best case of 2 threads was barely faster than 1. The CPU left over is
for the main process's own work and for the image workers (``loader.num_workers: auto`` starts as many workers as
there are CPUs beyond the first; they work ahead, then mostly wait for the decoder to take their studies). ``OMP_NUM_THREADS``
set by the user wins over all of this.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

log = logging.getLogger("cxrgen")

CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def cgroup_cpu_limit(path: Path) -> int | None:
    """CPUs allowed by a cgroup v2 quota (``cpu.max``: "QUOTA PERIOD", or "max PERIOD" for none), rounded up."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def allotted_cpus(env: dict[str, str] | None = None, cgroup: Path | None = None) -> int:
    """CPUs this process may run on: affinity mask, ``SLURM_CPUS_PER_TASK``, cgroup quota, core count (the
    smallest)."""
    env = os.environ if env is None else env
    counts = [os.cpu_count() or 1]
    if hasattr(os, "sched_getaffinity"):
        counts.append(len(os.sched_getaffinity(0)))
    slurm = env.get("SLURM_CPUS_PER_TASK", "").strip()
    if slurm.isdigit() and int(slurm) > 0:
        counts.append(int(slurm))
    quota = cgroup_cpu_limit(CGROUP_CPU_MAX if cgroup is None else cgroup)
    if quota is not None:
        counts.append(quota)
    return max(1, min(counts))


def intra_op_threads(device_type: str, env: dict[str, str] | None = None, cpus: int | None = None) -> int:
    """Intra-op threads for a run on ``device_type``: the allotted CPUs less one, at least 1; at most 4 beside a
    GPU (the host only launches kernels there). See the module docstring for why one CPU is left free."""
    cpus = allotted_cpus(env) if cpus is None else cpus
    threads = max(1, cpus - 1)
    return threads if device_type == "cpu" else min(threads, 4)


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
