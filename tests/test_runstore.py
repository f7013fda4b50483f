"""The run store on its own: part files and their commit markers, atomic writes under injected crashes, the lock
files, and the merge's checks. No model: rows are written through the store's own API."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cxrgen import runstore
from cxrgen.config import Config
from cxrgen.evaluation import EvaluationInputError, load_systems, read_results_csv
from cxrgen.runstore import (FileLock, LockHeldError, LockLostError, PartFile, PartReadBackError, ResultRow, RunError,
                             RunPlan, RunStore, atomic_write, rows_to_csv)
from helpers import crash_points

ROOT = Path(__file__).resolve().parents[1]


def row(i: int, report: str = "No effusion.") -> ResultRow:
    return ResultRow(id=f"S{i:03d}", image_path="x.png", reference="The lungs are clear.", generated_report=report,
                     status="ok", error="", n_new_tokens=3, stopped_at_eos=True, seconds=0.25)


# -- parts ---------------------------------------------------------------------------------------------------------

def test_a_read_never_goes_past_the_committed_length(tmp_path):
    part = PartFile(tmp_path / "shard-0-of-1.csv", "run")
    part.append([row(1), row(2)])
    committed = part.path.read_bytes()
    with open(part.path, "ab") as f:  # a whole batch written, killed before its commit
        f.write(rows_to_csv([row(3)], header=False))
    assert list(part.read()["id"]) == ["S001", "S002"]
    assert part.snapshot() == committed


def test_rows_that_do_not_read_back_are_left_uncommitted(tmp_path, monkeypatch):
    part = PartFile(tmp_path / "shard-0-of-1.csv", "run")
    part.append([row(1)])
    before = part.committed_length()

    def lossy(rows, header):  # a writer that loses the last character of each report
        return rows_to_csv([dataclasses.replace(r, generated_report=r.generated_report[:-1]) for r in rows], header)

    monkeypatch.setattr(runstore.parts, "rows_to_csv", lossy)
    with pytest.raises(PartReadBackError, match="S002"):
        part.append([row(2)])
    assert part.path.stat().st_size > before  # the rows are on disk ...
    assert part.committed_length() == before and list(part.read()["id"]) == ["S001"]  # ... and not committed


def test_a_crash_at_any_step_of_a_commit_leaves_the_rows_before_it_or_after_it(tmp_path, monkeypatch):
    part = PartFile(tmp_path / "shard-0-of-1.csv", "run")
    part.append([row(1)])
    crashes = 0
    for _ in crash_points(monkeypatch, lambda: part.append([row(2)])):  # dies writing the marker, before its
        crashes += 1                                                   # fsync, its rename, the folder's fsync
        assert list(part.read()["id"]) in (["S001"], ["S001", "S002"])
        part.recover()  # what the next start does
        if len(part.read()) == 2:
            break
    assert crashes >= 3 and list(part.read()["id"]) == ["S001", "S002"]
    part.append([row(3)])  # and the part goes on
    assert list(part.read()["id"]) == ["S001", "S002", "S003"]


def test_a_part_without_a_marker_has_no_rows(tmp_path):
    part = PartFile(tmp_path / "shard-0-of-1.csv", "run")
    part.path.write_bytes(rows_to_csv([row(1)], header=True))
    assert part.committed_length() == 0 and len(part.read()) == 0
    with pytest.raises(EvaluationInputError, match="nothing committed yet"):
        read_results_csv(part.path)


def test_evaluation_reads_only_committed_rows_at_every_byte_of_a_commit(tmp_path):
    """The states a reader can meet while a run commits (first batch without marker, a later batch being written
    after the marker) never give a malformed CSV, only the committed rows."""
    path = tmp_path / "run" / "parts" / "shard-0-of-1.csv"
    path.parent.mkdir(parents=True)
    first = rows_to_csv([row(1), row(2, 'a "quoted",\nmulti-line report')], header=True)
    second = rows_to_csv([row(3, "x, " * 40)], header=False)
    for k in range(len(first) + 1):
        path.write_bytes(first[:k])
        with pytest.raises(EvaluationInputError, match="nothing committed yet"):
            read_results_csv(path)
    path.with_suffix(".committed").write_text(json.dumps({"run": "r", "bytes": len(first)}))
    for k in range(len(second) + 1):
        path.write_bytes(first + second[:k])
        assert list(read_results_csv(path)["id"]) == ["S001", "S002"]
        assert list(load_systems([str(path)])["run"]["id"]) == ["S001", "S002"]


WRITER = """
import sys
from cxrgen.runstore import PartFile, ResultRow
part = PartFile(sys.argv[1], "r")
for start in range(int(sys.argv[2])):  # each round starts the part over, as --no-resume does
    part.remove()
    for batch in range(int(sys.argv[3])):
        part.append([ResultRow(id=f"S{batch:03d}-{i}", image_path="x", reference="ref", generated_report="a, " * 50000,
                               status="ok", error="", n_new_tokens=1, stopped_at_eos=True, seconds=0.0)
                     for i in range(3)])
"""


def test_evaluation_of_a_part_being_written_never_reports_a_malformed_csv(tmp_path):
    path = tmp_path / "parts" / "shard-0-of-1.csv"
    path.parent.mkdir()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), "8", "4"], cwd=ROOT, stderr=subprocess.PIPE,
                              text=True)
    reads = 0
    while writer.poll() is None:
        try:
            frame = read_results_csv(path)
        except EvaluationInputError as e:  # before the first commit; never "malformed"
            assert "nothing committed yet" in str(e) or "no such file" in str(e), e
            continue
        assert len(frame) % 3 == 0 and frame["id"].is_unique
        reads += 1
    assert writer.returncode == 0, writer.stderr.read()
    assert len(read_results_csv(path)) == 12 and reads > 0


# -- atomic writes -------------------------------------------------------------------------------------------------

def test_atomic_write_leaves_the_old_or_the_new_file_whatever_step_it_dies_in(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    old, new = b'{"v": 1}\n', json.dumps({"v": 2, "pad": "x" * 10000}).encode()
    path.write_bytes(old)
    points = 0
    seen = set()
    for _ in crash_points(monkeypatch, lambda: atomic_write(path, new)):
        assert path.read_bytes() in (old, new)  # never torn, never half
        assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left
        seen.add(path.read_bytes())
        path.write_bytes(old)
        points += 1
    # died in the write, before its fsync, before the rename (old file), before the folder's fsync (new file)
    assert points >= 4 and seen == {old, new} and path.read_bytes() == new


# -- locks ---------------------------------------------------------------------------------------------------------

def test_a_held_lock_refuses_a_second_taker_naming_the_holder(tmp_path):
    path = tmp_path / "shard.lock"
    with FileLock(path, "run shard 0/1") as lock:
        with pytest.raises(LockHeldError) as err:
            FileLock(path, "run shard 0/1").acquire()
        message = str(err.value)
        assert f"host {socket.gethostname()}, pid {os.getpid()}, since {lock.holder.since}" in message
        assert message.startswith("run shard 0/1") and "\n" not in message
    FileLock(path, "run shard 0/1").acquire().release()  # given back: free again


HOLD = """
import sys, time
from cxrgen.runstore import FileLock
FileLock(sys.argv[1], "test").acquire()
print("held", flush=True)
time.sleep(600)
"""


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path, caplog):
    path = tmp_path / "shard.lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(LockHeldError, match=f"pid {holder.pid}"):
        FileLock(path, "test").acquire()
    holder.kill()
    holder.wait()
    with caplog.at_level("WARNING", logger="cxrgen"):
        lock = FileLock(path, "test").acquire()
    assert f"process {holder.pid} is no longer running" in caplog.text
    assert json.loads(path.read_text())["pid"] == os.getpid()
    lock.release()


def _foreign_lock(path: Path, **fields) -> None:
    path.write_text(json.dumps({"host": "node-elsewhere", "pid": 4242, "since": "2030-01-01T00:00:00+00:00",
                                "token": "t", "boot_id": "b", "pid_ns": "pid:[1]", "start_ticks": 7, **fields}))


def test_another_hosts_lock_is_taken_over_only_once_its_heartbeat_stops(tmp_path, caplog):
    path = tmp_path / "shard.lock"
    _foreign_lock(path)
    with pytest.raises(LockHeldError, match="host node-elsewhere, pid 4242"):
        FileLock(path, "test", stale_after=60).acquire()
    old = time.time() - 120
    os.utime(path, (old, old))  # no heartbeat for two minutes
    with caplog.at_level("WARNING", logger="cxrgen"):
        FileLock(path, "test", stale_after=60).acquire().release()
    assert "node-elsewhere" in caplog.text and "no heartbeat" in caplog.text


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_a_reused_pid_does_not_keep_a_lock_alive(tmp_path, caplog):
    me = runstore.lock.Holder.me()
    path = tmp_path / "shard.lock"
    _foreign_lock(path, host=me.host, pid=os.getpid(), boot_id=me.boot_id, pid_ns=me.pid_ns,
                  start_ticks=me.start_ticks + 1)  # this pid, but another process's start time
    with caplog.at_level("WARNING", logger="cxrgen"):
        FileLock(path, "test").acquire().release()
    assert "its pid now belongs to another process" in caplog.text


def test_a_holder_whose_lock_was_taken_over_stops_and_leaves_the_new_lock_alone(tmp_path):
    path = tmp_path / "shard.lock"
    lock = FileLock(path, "test").acquire()
    path.unlink()
    _foreign_lock(path)  # taken over by another host meanwhile
    with pytest.raises(LockLostError, match="taken over by host node-elsewhere"):
        lock.verify()
    lock.release()
    assert json.loads(path.read_text())["host"] == "node-elsewhere"


# -- the merge -----------------------------------------------------------------------------------------------------

def test_the_merge_refuses_an_id_present_twice_even_with_different_rows(tmp_path):
    cfg = Config.from_dict({"data": {"format": "manifest", "manifest": "m.csv"},
                            "output": {"dir": str(tmp_path), "run_name": "r"}})
    store = RunStore(cfg.run_dir)
    ids = [f"S{i:03d}" for i in range(4)]
    parts = {(0, 2): [row(0), row(2)], (1, 2): [row(1), row(3), row(2, "Another report.")]}
    for shard, rows in parts.items():
        plan = RunPlan(cfg, shard, None, ids)
        with store.shard_lock(shard) as lock:
            store.begin(plan, resume=True)
            writer = store.open_shard(plan, lock)
            writer.append(rows)
            writer.end(ids[shard[0]::2], None)
    with pytest.raises(RunError, match="ids present more than once across the parts: S002"):
        store.merged_rows()


def test_retrieval_columns_read_back_and_older_files_read_with_their_defaults(tmp_path):
    """A retrieved row's source study, similarity and leakage rules come back as written; a generated row's
    similarity stays missing (not 0), and a results file written before these columns existed still reads."""
    part = PartFile(tmp_path / "shard-0-of-1.csv", "run")
    generated = ResultRow("A", "a.png", "ref", "gen", "ok", "", 3, True, 0.5)
    retrieved = ResultRow("B", "b.png", "ref", "train report", "ok", "", 0, True, 0.25, retrieved_id="T7",
                          retrieved_image="/data/t7.png", similarity=0.9123456789012345, leakage="id,image")
    assert part.append([generated, retrieved]) == 2
    back = [ResultRow.from_record(r) for r in part.read().to_dict("records")]
    assert back == [generated, retrieved] and back[0].similarity is None
    assert runstore.leakage_counts(part.read()) == {"studies": 1, "id": 1, "image": 1, "patient": 0}
    assert runstore.leakage_counts(part.read().iloc[:1]) is None  # nothing retrieved: no leakage counts

    old = tmp_path / "old.csv"
    old.write_text('"id","image_path","reference","generated_report","status","error","n_new_tokens",'
                   '"stopped_at_eos","seconds","bleu_1"\n"A","a.png","ref","gen","ok","",3,True,0.5,0.25\n')
    frame = runstore.read_reports_csv(old, "old.csv")
    assert list(frame.columns) == [*runstore.COLUMNS, "bleu_1"]
    assert ResultRow.from_record(frame.iloc[0].to_dict()) == generated
