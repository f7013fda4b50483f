"""slurm/generate.sbatch, slurm/evaluate.sbatch and slurm/finetune.sbatch on a real single-node Slurm (slurmctld,
slurmd and munged).

The cluster is started in a temporary folder with its own slurm.conf, munge key and socket, on free local ports, and
is stopped afterwards, jobs included. The jobs run in a copy of the code without a logs/ folder, as in a fresh clone,
on a tiny random checkpoint on the CPU. Needs root and Debian's slurm-wlm and munge (.ci/run installs them); skipped
otherwise.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxrgen import runner, runstore
from cxrgen.models.cxr_llava.tiny import build_tiny_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "squeue")
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
NODE = "cxrnode"
N_STUDIES = 24  # 12 per task; one report (batch of 1, 800 tokens) takes ~0.4 s, so a task runs for several seconds


def _skip_reason() -> str | None:
    if not sys.platform.startswith("linux"):
        return "a local Slurm cluster is only started on Linux"
    missing = [b for b in BINARIES if shutil.which(b, path=SEARCH_PATH) is None]
    if missing:
        return f"Slurm is not installed (no {', '.join(missing)}); Debian: apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "starting slurmd, which runs the jobs, needs root"
    if not (Path(sys.prefix) / "bin" / "activate").is_file():
        return f"slurm/generate.sbatch activates a virtual environment; {sys.prefix} is not one"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or "")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Cluster:
    root: Path
    env: dict
    daemons: list = field(default_factory=list)

    def run(self, *args: str, cwd: Path | None = None, check: bool = True, timeout: float = 60,
            env: dict | None = None) -> subprocess.CompletedProcess:
        result = subprocess.run(args, cwd=cwd, env=env or self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {result.returncode}: {result.stderr.strip()}\n{self.logs()}")
        return result

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` of one job or array task, as a dict; {} once Slurm has forgotten it."""
        result = self.run("scontrol", "-o", "show", "job", job_id, check=False)
        return dict(re.findall(r"(\w+)=(\S*)", result.stdout)) if result.returncode == 0 else {}

    def logs(self, chars: int = 1500) -> str:
        parts = []
        for path in sorted((self.root / "log").glob("*")):
            parts.append(f"--- {path.name} ---\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


def _write_slurm_conf(root: Path, munge_socket: Path) -> Path:
    (root / "plugstack.conf").write_text("")
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=cxrgentest",
        "SlurmctldHost=localhost(127.0.0.1)",
        f"SlurmctldPort={_free_port()}",
        f"SlurmdPort={_free_port()}",
        "SlurmUser=root",
        "SlurmdUser=root",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={munge_socket}",
        f"StateSaveLocation={root / 'state'}",
        f"SlurmdSpoolDir={root / 'spool'}",
        f"SlurmctldPidFile={root / 'slurmctld.pid'}",
        f"SlurmdPidFile={root / 'slurmd.pid'}",
        f"SlurmctldLogFile={root / 'log' / 'slurmctld.log'}",
        f"SlurmdLogFile={root / 'log' / 'slurmd.log'}",
        f"PlugStackConfig={root / 'plugstack.conf'}",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none",
        "SchedulerType=sched/builtin",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU_Memory",
        "MpiDefault=none",
        "MailProg=/bin/true",
        "ReturnToService=2",
        "KillWait=10",
        "SlurmdParameters=config_overrides",
        f"NodeName={NODE} NodeAddr=127.0.0.1 NodeHostname=localhost CPUs={max(os.cpu_count() or 1, 2)} "
        "RealMemory=4000 State=UNKNOWN",
        f"PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP",
        "",
    ]))
    return conf


def _kill_strays(conf: Path) -> None:
    """SIGKILL every process still running with this cluster's SLURM_CONF (job steps and their children)."""
    marker = f"SLURM_CONF={conf}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if marker in (proc / "environ").read_bytes().split(b"\0"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the daemon, then SIGKILL its session's process group; reaped last, so its pid is not reused before."""
    if proc.returncode is None:
        os.kill(proc.pid, signal.SIGTERM)
        deadline = time.time() + 15
        while time.time() < deadline and os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            time.sleep(0.1)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
    proc.wait()


@pytest.fixture
def slurm():
    root = Path(tempfile.mkdtemp(prefix="cxrslurm-", dir="/tmp" if Path("/tmp").is_dir() else None))
    root.chmod(0o755)  # munged wants its socket's folders open to all
    for sub in ("munge", "state", "spool", "log"):
        (root / sub).mkdir(mode=0o755)
    munge_socket = root / "munge" / "munge.socket"
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = _write_slurm_conf(root, munge_socket)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
    env.update(SLURM_CONF=str(conf), PATH=SEARCH_PATH)
    cluster = Cluster(root, env)

    def start(*cmd: str) -> None:
        with open(root / "log" / f"{cmd[0]}.out", "wb") as out:
            cluster.daemons.append(subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                                    stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("munged", "--foreground", f"--socket={munge_socket}", f"--key-file={key}",
              f"--log-file={root / 'log' / 'munged.log'}", f"--pid-file={root / 'munge' / 'munged.pid'}",
              f"--seed-file={root / 'munge' / 'munged.seed'}", "--num-threads=2")
        deadline = time.time() + 20
        while not munge_socket.exists() and cluster.daemons[0].poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert munge_socket.exists(), f"munged did not start\n{cluster.logs()}"
        start("slurmctld", "-D", "-f", str(conf))
        start("slurmd", "-D", "-N", NODE, "-f", str(conf))
        deadline = time.time() + 60
        state = ""
        while time.time() < deadline and all(d.poll() is None for d in cluster.daemons):
            result = cluster.run("scontrol", "-o", "show", "node", NODE, check=False, timeout=20)
            state = dict(re.findall(r"(\w+)=(\S*)", result.stdout)).get("State", "")
            if state.startswith("IDLE"):
                break
            time.sleep(0.5)
        assert state.startswith("IDLE"), f"the Slurm node did not come up (state {state!r})\n{cluster.logs()}"
        yield cluster
    finally:
        try:
            ids = cluster.run("squeue", "-h", "-o", "%i", check=False, timeout=20).stdout.split()
            if ids:
                cluster.run("scancel", "--full", *ids, check=False, timeout=20)
                deadline = time.time() + 30
                while time.time() < deadline and cluster.run("squeue", "-h", check=False, timeout=20).stdout.strip():
                    time.sleep(0.5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for daemon in reversed(cluster.daemons):
            _stop(daemon)
        _kill_strays(conf)
        shutil.rmtree(root, ignore_errors=True)


def _fresh_clone(dest: Path) -> Path:
    """The code and the Slurm scripts, and no logs/ folder (which no clone has: git keeps no empty folders)."""
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("cxrgen", "slurm"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    for name in ("generate_cxr.py", "evaluate.py", "finetune_cxr.py"):
        shutil.copy2(ROOT / name, dest / name)
    return dest


def _committed(part: Path) -> int:
    try:
        return len(runstore.PartFile(part).read())
    except (FileNotFoundError, runner.RunError):  # not started yet, or a marker being replaced
        return 0


def _wait_for(cluster: Cluster, what: str, condition, timeout: float, logs: list[Path]):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    text = "\n".join(f"--- {p.name} ---\n{p.read_text() if p.exists() else '(none)'}" for p in logs)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{text}\n{cluster.logs()}")


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _stop_until_requeued(slurm: Cluster, job: str, log: Path, progressed, what: str) -> dict:
    """Once the running job has ``progressed()``, USR1 to its batch shell (what --signal=B:USR1 does); returns its
    ``scontrol show job`` once its script has requeued it."""
    def running_and_progressed():
        state = slurm.job(job).get("JobState")
        assert state not in FINAL_STATES, f"{job} ended ({state}) before it could be interrupted\n" + (
            log.read_text() if log.exists() else "(no log)")
        return progressed()

    _wait_for(slurm, what, running_and_progressed, 180, [log])
    slurm.run("scancel", "--signal=USR1", "--batch", job)

    def requeued():
        info = slurm.job(job)
        return info if info.get("JobState") == "PENDING" and int(info.get("Restarts", "0")) >= 1 else None

    return _wait_for(slurm, f"{job} to be requeued", requeued, 120, [log])


def _restart_now(slurm: Cluster, job: str, info: dict) -> None:
    """Slurm delays a requeued job's start by two minutes; start it now, but not within the second its previous run
    was killed in: slurmd refuses a job credential issued in that second ("Job credential revoked")."""
    time.sleep(2)
    if "Held" in info.get("Reason", ""):
        slurm.run("scontrol", "release", job)
    slurm.run("scontrol", "update", f"JobId={job}", "StartTime=now")


def test_array_task_requeued_by_usr1_resumes_and_the_merged_run_evaluates(slurm):
    """sbatch from a fresh clone (no logs/): USR1 to one task's batch shell (as --signal=B:USR1 does) reaches the
    run, which commits its batch and exits 75; the script requeues the task, which resumes where it stopped; every
    study ends up exactly once in reports.csv, and slurm/evaluate.sbatch scores it."""
    clone = _fresh_clone(slurm.root / "clone")
    tiny = build_tiny_checkpoint(slurm.root / "tiny", seed=0, shards=1, never_eos=True)
    images = sorted((ROOT / "demo" / "images").glob("*.png"))
    ids = [f"S{i:03d}" for i in range(N_STUDIES)]
    pd.DataFrame({"id": ids, "image_path": [str(images[i % len(images)]) for i in range(N_STUDIES)],
                  "reference": [f"Report {i}: the heart is normal in size, no effusion." for i in range(N_STUDIES)]}
                 ).to_csv(slurm.root / "manifest.csv", index=False)
    run_dir = slurm.root / "runs" / "slurm"
    (slurm.root / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny), "device": "cpu"},
        "generation": {"batch_size": 1, "max_new_tokens": 800},
        "data": {"format": "manifest", "manifest": str(slurm.root / "manifest.csv"), "split": "all"},
        "output": {"dir": str(run_dir.parent), "run_name": run_dir.name, "html": False},
        "evaluation": {"bootstrap": 50},
    }))
    job_env = {**slurm.env, "CXRGEN_VENV": sys.prefix, "OMP_NUM_THREADS": "1"}
    # The script asks for a GPU and 48 GB; the command line overrides both, as a CPU run needs.
    job = slurm.run("sbatch", "--parsable", "--array=0-1", "--gres=none", "--cpus-per-task=1", "--mem=1G",
                    "--time=00:10:00", "slurm/generate.sbatch", "--config", str(slurm.root / "config.yaml"), "--quiet",
                    cwd=clone, env=job_env).stdout.strip().split(";")[0]
    task0, task1 = f"{job}_0", f"{job}_1"
    log0, log1 = clone / f"cxrgen-{task0}.out", clone / f"cxrgen-{task1}.out"
    part0 = run_dir / "parts" / "shard-0-of-2.csv"

    info = _stop_until_requeued(slurm, task0, log0, lambda: _committed(part0) >= 1, "task 0 to commit a batch")
    committed_before = _committed(part0)
    assert 1 <= committed_before < N_STUDIES // 2
    _restart_now(slurm, task0, info)

    def finished():
        infos = [slurm.job(t) for t in (task0, task1)]
        return infos if all(i.get("JobState") in FINAL_STATES for i in infos) else None

    info0, info1 = _wait_for(slurm, "both tasks to finish", finished, 240, [log0, log1])
    out0, out1 = log0.read_text(), log1.read_text()
    assert (info0["JobState"], info0["ExitCode"], info0["Restarts"]) == ("COMPLETED", "0:0", "1"), out0 + slurm.logs()
    assert (info1["JobState"], info1["ExitCode"], info1["Restarts"]) == ("COMPLETED", "0:0", "0"), out1 + slurm.logs()
    assert "received SIGUSR1" in out0, out0  # --batch signals only the shell: the script passed it on
    assert f"interrupted after saving its work; requeueing {task0}" in out0, out0  # generate_cxr.py exited 75
    assert re.findall(r"(\d+) already done", out0) == ["0", str(committed_before)], out0
    assert re.findall(r"(\d+) already done", out1) == ["0"], out1
    assert not (clone / "logs").exists()

    reports = runstore.read_reports_csv(run_dir / "reports.csv", "reports.csv")
    assert sorted(reports["id"]) == ids and reports["id"].is_unique
    assert (reports["status"] == "ok").all()

    # Evaluation on a CPU node; less memory than the script's 8 GB, which this node does not have.
    result = slurm.run("sbatch", "--parsable", "--wait", "--cpus-per-task=1", "--mem=1G", "slurm/evaluate.sbatch",
                       str(run_dir / "reports.csv"), "--output-dir", str(slurm.root / "eval"), "--n-boot", "50",
                       cwd=clone, env=job_env, check=False, timeout=240)
    eval_job = result.stdout.strip().split(";")[0]
    eval_log = clone / f"cxrgen-eval-{eval_job}.out"
    assert result.returncode == 0, (eval_log.read_text() if eval_log.exists() else result.stderr) + slurm.logs()
    assert "wrote" in eval_log.read_text()
    per_sample = pd.read_csv(slurm.root / "eval" / "per_sample.csv")
    assert sorted(per_sample["id"]) == ids
    summary = json.loads((slurm.root / "eval" / "summary.json").read_text())
    (system,) = summary["systems"].values()
    assert (system["n"], system["n_error"]) == (N_STUDIES, 0)
    merged = json.loads((run_dir / "metrics.json").read_text())  # same reports, bootstrap settings and seed
    for name in ("bleu_1", "rouge_l"):
        assert system["metrics"][name]["value"] == pytest.approx(merged["metrics"][name]["value"], rel=1e-12)


def test_the_documented_sbatch_line_builds_a_retrieval_index(slurm):
    """README, "Retrieval": CONFIG=configs/rad-dino-retrieval.yaml sbatch --array=0 --job-name=cxrgen-index
    slurm/generate.sbatch --build-index, with a tiny encoder, the demo studies and a CPU node's limits."""
    from cxrgen.models.retrieval.tiny import build_tiny_dinov2

    clone = _fresh_clone(slurm.root / "clone")
    (clone / "configs").mkdir()
    shutil.copy2(ROOT / "configs" / "rad-dino-retrieval.yaml", clone / "configs")
    encoder = build_tiny_dinov2(slurm.root / "dinov2")
    index_dir = slurm.root / "indexes"
    job_env = {**slurm.env, "CXRGEN_VENV": sys.prefix, "OMP_NUM_THREADS": "1",
               "CONFIG": "configs/rad-dino-retrieval.yaml"}
    result = slurm.run("sbatch", "--parsable", "--wait", "--array=0", "--job-name=cxrgen-index", "--gres=none",
                       "--cpus-per-task=1", "--mem=1G", "--time=00:10:00", "slurm/generate.sbatch", "--build-index",
                       "--set", f"model.name_or_path={encoder}", "--set", "model.device=cpu",
                       "--set", "data.format=manifest", "--set", f"data.manifest={ROOT / 'demo' / 'manifest.csv'}",
                       "--set", "data.split=all", "--set", f"retrieval.index_dir={index_dir}",
                       cwd=clone, env=job_env, check=False, timeout=240)
    job = result.stdout.strip().split(";")[0]
    log = clone / f"cxrgen-index-{job}_0.out"
    text = log.read_text() if log.exists() else "(no log)"
    assert result.returncode == 0, text + slurm.logs()
    (folder,) = index_dir.iterdir()
    assert f"{folder}: 4 studies indexed" in text
    assert json.loads((folder / "index.json").read_text())["count"] == 4


def test_finetune_job_stopped_by_usr1_saves_is_requeued_and_resumes_to_the_end(slurm):
    """slurm/finetune.sbatch with two CPU processes over gloo (NPROC=2, torchrun): USR1 to the batch shell reaches
    both processes, which save a checkpoint at the same step and exit 75; the script requeues the job, which resumes
    from that checkpoint and trains to the last step; the log ends with the adapter folder."""
    from helpers import committed_step, write_training_manifest

    clone = _fresh_clone(slurm.root / "clone")
    tiny = build_tiny_checkpoint(slurm.root / "tiny", seed=0, shards=1)
    manifest = write_training_manifest(slurm.root / "data")
    run_dir = slurm.root / "runs" / "ft"
    (slurm.root / "config.yaml").write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny), "device": "cpu"},
        "prompt": {"system": "You are a radiologist.", "user": "Report."},
        "data": {"format": "manifest", "manifest": str(manifest)},
        "output": {"dir": str(run_dir.parent)},
        "training": {"run_name": run_dir.name, "max_steps": 80, "batch_size": 2, "gradient_accumulation": 1,
                     "learning_rate": 0.005, "checkpoint_every": 5, "eval_every": 40, "gradient_checkpointing": False},
    }))
    job_env = {**slurm.env, "CXRGEN_VENV": sys.prefix, "NPROC": "2"}
    # a time limit well beyond the script's B:USR1@600, which would otherwise signal the job as soon as it starts
    job = slurm.run("sbatch", "--parsable", "--gres=none", "--cpus-per-task=2", "--mem=2G", "--time=00:30:00",
                    "slurm/finetune.sbatch", "--config", str(slurm.root / "config.yaml"), "--quiet",
                    cwd=clone, env=job_env).stdout.strip().split(";")[0]
    log = clone / f"cxrgen-finetune-{job}.out"

    info = _stop_until_requeued(slurm, job, log, lambda: committed_step(run_dir) >= 5, "the first checkpoint")
    stopped_at = committed_step(run_dir)
    assert 5 <= stopped_at < 80
    _restart_now(slurm, job, info)

    info = _wait_for(slurm, "the job to finish", lambda: (lambda i: i if i.get("JobState") in FINAL_STATES else None)(
        slurm.job(job)), 240, [log])
    out = log.read_text()
    assert (info["JobState"], info["ExitCode"], info["Restarts"]) == ("COMPLETED", "0:0", "1"), out + slurm.logs()
    assert out.count("received SIGUSR1") == 2, out  # both processes got it from the script
    assert f"interrupted after saving a checkpoint; requeueing {job}" in out, out
    assert f"resuming at step {stopped_at} " in out, out
    assert out.strip().splitlines()[-1] == str(run_dir / "best")
    record = json.loads((run_dir / "train.json").read_text())
    starts = record["starts"]
    assert [(s["outcome"], s["processes"]) for s in starts] == [("interrupted", 2), ("ended", 2)]
    assert starts[0]["step_after"] == stopped_at and starts[1]["steps_run"] == 80 - stopped_at
    assert [s["step"] for s in record["steps"]] == list(range(1, 81)) and record["schedule"]["global_batch"] == 4
