"""CPU threads and image workers follow the CPUs the process was given (affinity, Slurm, cgroup quota)."""

from __future__ import annotations

import os
import warnings

import pytest
import torch

from cxrgen import loader, threads


@pytest.fixture
def machine(monkeypatch, tmp_path):
    """A fake machine: ``machine(cores, affinity, quota)``; returns the cgroup cpu.max path to pass on."""
    cpu_max = tmp_path / "cpu.max"

    def make(cores: int, affinity: int, quota: str = "max 100000"):
        monkeypatch.setattr(os, "cpu_count", lambda: cores)
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(affinity)), raising=False)
        cpu_max.write_text(quota + "\n")
        monkeypatch.setattr(threads, "CGROUP_CPU_MAX", cpu_max)
        return cpu_max

    return make


@pytest.mark.parametrize("cores,affinity,slurm,quota,expected", [
    (64, 64, None, "max 100000", 64),
    (64, 6, None, "max 100000", 6),          # taskset / Slurm cpuset
    (64, 64, "3", "max 100000", 3),          # SLURM_CPUS_PER_TASK smaller than the mask
    (64, 8, "16", "max 100000", 8),          # ... and larger: the mask wins
    (64, 64, None, "250000 100000", 3),      # docker --cpus 2.5: rounded up
    (64, 64, None, "50000 100000", 1),
    (64, 4, "abc", "garbage", 4),            # unreadable settings are ignored
    (2, 2, "0", "max 100000", 2),
])
def test_allotted_cpus_is_the_smallest_limit(machine, cores, affinity, slurm, quota, expected):
    cpu_max = machine(cores, affinity, quota)
    env = {} if slurm is None else {"SLURM_CPUS_PER_TASK": slurm}
    assert threads.allotted_cpus(env, cpu_max) == expected


def test_cgroup_file_missing_means_no_limit(tmp_path):
    assert threads.cgroup_cpu_limit(tmp_path / "absent") is None
    (tmp_path / "cpu.max").write_text("300000 100000")
    assert threads.cgroup_cpu_limit(tmp_path / "cpu.max") == 3


@pytest.mark.parametrize("cpus,cpu_threads,gpu_threads", [(1, 1, 1), (2, 1, 1), (3, 2, 2), (8, 7, 4), (64, 63, 4)])
def test_intra_op_threads_leave_one_cpu_free(cpus, cpu_threads, gpu_threads):
    assert threads.intra_op_threads("cpu", cpus=cpus) == cpu_threads
    assert threads.intra_op_threads("cuda", cpus=cpus) == gpu_threads


def test_configure_threads_follows_slurm_and_yields_to_omp_num_threads(machine, monkeypatch):
    machine(32, 32)
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
        assert threads.configure_threads(torch.device("cpu")) == 2 == torch.get_num_threads()
        torch.set_num_threads(1)
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's setting is left alone
        monkeypatch.setenv("SLURM_CPUS_PER_TASK", "5")
        assert threads.configure_threads(torch.device("cpu")) == 1 == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("affinity,studies,expected", [(1, 100, 0), (2, 100, 1), (4, 100, 3), (32, 100, 8),
                                                       (32, 3, 2), (8, 1, 0)])
def test_auto_loader_workers_never_exceed_the_cpus(machine, monkeypatch, affinity, studies, expected):
    machine(64, affinity)
    monkeypatch.delenv("SLURM_CPUS_PER_TASK", raising=False)
    workers = loader.worker_count("auto", studies)
    assert workers == expected
    assert loader.worker_count(5, studies) == 5  # an explicit number is taken as given
    # PyTorch warns when a DataLoader has more workers than the affinity mask allows: never with auto
    data_loader = torch.utils.data.DataLoader(list(range(4)), num_workers=workers)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data_loader.check_worker_number_rationality()
