"""The finishing step (merge, evaluate, results page) through the runner and generate_cxr.py --merge, on a scripted
backend: the settings it takes, error rows and exit codes, one merge at a time, reruns that keep what the run knew,
and outputs that are never torn by a crash."""

from __future__ import annotations

import io
import json
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path


import generate_cxr
from cxrgen import finishing, runner
from cxrgen.config import load_config
from cxrgen.runstore import OUTPUTS, RunStore, read_reports_csv
from helpers import ROOT, ScriptedBackend, crash_points, make_config, reports, write_manifest


def _config(tmp_path: Path, n: int, run_name: str = "run", broken: dict | None = None, **overrides) -> Path:
    manifest = write_manifest(tmp_path, n, broken=broken)
    return make_config(tmp_path, tmp_path / "unused-checkpoint", manifest, run_name, **overrides)


def _generate(cfg_path: Path, *settings: str, **kwargs) -> int:
    return runner.generate(load_config(cfg_path, list(settings)), model=ScriptedBackend(), progress=False, **kwargs)


def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def test_an_all_error_run_writes_every_error_row_and_exits_3(tmp_path, caplog):
    cfg_path = _config(tmp_path, 4, broken={i: str(tmp_path / "missing.png") for i in range(4)}, output__html=True)
    with caplog.at_level("INFO", logger="cxrgen"):
        assert _generate(cfg_path) == runner.EXIT_ROW_ERRORS
    run_dir = tmp_path / "runs" / "run"
    rows = reports(run_dir)
    assert list(rows["status"]) == ["error"] * 4 and rows["error"].str.contains("missing.png").all()
    assert not (run_dir / "metrics.json").exists() and "missing.png" in (run_dir / "report.html").read_text()
    (line,) = [r.message for r in caplog.records if "metrics.json" in r.message]
    assert line.startswith(f"{run_dir}: metrics.json and the scores are left out")
    assert line.endswith("no row can be scored (4 rows, 4 with status error, 0 with an empty reference)")
    assert _json(run_dir / "run.json")["counts"]["error"] == 4


def test_one_error_row_gives_exit_3_to_its_shard_and_to_the_run(tmp_path):
    cfg_path = _config(tmp_path, 4, broken={0: str(tmp_path / "missing.png")})  # S000, in shard 0 of 2
    assert _generate(cfg_path, shard=(0, 2)) == runner.EXIT_ROW_ERRORS  # finished first: not merged, still 3
    assert not (tmp_path / "runs" / "run" / "reports.csv").exists()
    assert _generate(cfg_path, shard=(1, 2)) == runner.EXIT_ROW_ERRORS  # its own rows are ok; the run has an error
    assert list(reports(tmp_path / "runs" / "run")["status"]) == ["error", "ok", "ok", "ok"]


def test_merge_takes_the_evaluation_and_output_settings_given_now_and_refuses_others(tmp_path, capsys):
    cfg_path = _config(tmp_path, 4, evaluation__bootstrap=50)
    assert _generate(cfg_path) == 0
    run_dir = tmp_path / "runs" / "run"
    assert "boot:50" in _json(run_dir / "metrics.json")["signature"] and not (run_dir / "report.html").exists()
    assert generate_cxr.main(["--merge", str(run_dir), "--set", "evaluation.bootstrap=200", "--set",
                              "output.html=true", "--quiet"]) == 0
    assert "boot:200" in _json(run_dir / "metrics.json")["signature"] and (run_dir / "report.html").exists()
    config = _json(run_dir / "run.json")["config"]
    assert config["evaluation"]["bootstrap"] == 200 and config["output"]["html"] is True
    # a setting that made the reports cannot change: refused by name, nothing rewritten
    before = {name: (run_dir / name).read_bytes() for name in OUTPUTS}
    capsys.readouterr()
    assert generate_cxr.main(["--merge", str(run_dir), "--set", "generation.max_new_tokens=5", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "generation.max_new_tokens (5 now, 24 in the run)" in err
    assert {name: (run_dir / name).read_bytes() for name in OUTPUTS} == before
    # the caller's own config file: its evaluation settings win too
    assert generate_cxr.main(["--merge", str(run_dir), "--config", str(cfg_path), "--set", "evaluation.seed=3",
                              "--quiet"]) == 0
    assert "boot:50|seed:3" in _json(run_dir / "metrics.json")["signature"]


def test_a_rerun_of_a_finished_run_keeps_its_model_prompt_and_history(tmp_path, caplog):
    cfg_path = _config(tmp_path, 3)
    assert _generate(cfg_path) == 0
    run_dir = tmp_path / "runs" / "run"
    first = _json(run_dir / "run.json")
    with caplog.at_level("INFO", logger="cxrgen"):
        assert _generate(cfg_path) == 0  # nothing to generate, no model loaded, nothing to finish again
    assert "already finished with these rows and settings" in caplog.text
    assert _generate(cfg_path, "evaluation.bootstrap=60") == 0  # finished again with the new setting
    info = _json(run_dir / "run.json")
    assert info["model"] == first["model"] == ScriptedBackend().describe()
    assert info["prompt"] == first["prompt"] == ScriptedBackend().render_prompt(None)
    assert info["config"]["evaluation"]["bootstrap"] == 60
    (shard,) = info["shards"]
    assert [entry["committed_before"] for entry in shard["history"]] == [0, 3, 3]
    assert ["versions" in entry for entry in shard["history"]] == [True, False, False]  # only the first loaded it


def test_two_shards_finishing_at_the_same_moment_merge_once(tmp_path, monkeypatch, caplog):
    cfg = load_config(_config(tmp_path, 6))
    barrier = threading.Barrier(2, timeout=60)
    complete = RunStore.complete

    def together(self, run_id, shards):  # both shards are done before either asks whether all are
        barrier.wait()
        return complete(self, run_id, shards)

    evaluate, merges = finishing._evaluate, []
    monkeypatch.setattr(RunStore, "complete", together)
    monkeypatch.setattr(finishing, "_evaluate", lambda *args: merges.append(args) or evaluate(*args))
    codes = {}

    def shard(i):
        codes[i] = runner.generate(cfg, shard=(i, 2), model=ScriptedBackend(delay=0.01), progress=False)

    threads = [threading.Thread(target=shard, args=(i,)) for i in (0, 1)]
    with caplog.at_level("INFO", logger="cxrgen"):
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert codes == {0: 0, 1: 0} and len(merges) == 1
    assert "merge is in progress in another process" in caplog.text or "already finished" in caplog.text
    rows = reports(tmp_path / "runs" / "run")
    assert rows["id"].is_unique and len(rows) == 6


def _whole(name: str, data: bytes, ids: list[str]) -> bool:
    """Whether an output is complete: JSON that parses, a reports.csv with every study, a page whose data parse."""
    if name.endswith(".json"):
        json.loads(data)
    elif name == "reports.csv":
        assert list(read_reports_csv(io.BytesIO(data), name)["id"]) == ids
    else:
        text = data.decode("utf-8")
        assert text.endswith("</html>\n")
        json.loads(re.search(r'<script type="application/json" id="cxr-data">(.*?)</script>', text, re.S)[1])
    return True


def test_a_crash_at_any_write_fsync_or_rename_of_finishing_leaves_each_output_old_or_new(tmp_path, monkeypatch):
    cfg_path = _config(tmp_path, 4, output__html=True, evaluation__bootstrap=20)
    assert _generate(cfg_path) == 0
    store = RunStore(tmp_path / "runs" / "run")
    ids = list(reports(store.dir)["id"])
    old = {name: store.output(name).read_bytes() for name in OUTPUTS}
    newer = load_config(cfg_path, ["evaluation.bootstrap=30"])
    crashes = 0
    for _ in crash_points(monkeypatch, lambda: finishing.finish(store, newer)):
        crashes += 1
        for name in OUTPUTS:
            now = store.output(name).read_bytes()
            assert now == old[name] or _whole(name, now, ids), name
    assert crashes >= 16  # a write, its fsync, the rename and the folder's fsync of each of the four files
    assert "boot:30" in _json(store.output("metrics.json"))["signature"]
    assert _json(store.output("run.json"))["config"]["evaluation"]["bootstrap"] == 30


def _held_by(lock: Path, pid: int) -> bool:
    try:
        return json.loads(lock.read_text())["pid"] == pid
    except (OSError, ValueError, KeyError):
        return False


def _merge_process(run_dir: Path, *settings: str) -> subprocess.Popen:
    args = [a for s in settings for a in ("--set", s)]
    return subprocess.Popen([sys.executable, str(ROOT / "generate_cxr.py"), "--quiet", "--merge", str(run_dir), *args],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_at_random_points_of_finishing_never_tears_an_output(tmp_path):
    cfg_path = _config(tmp_path, 12, output__html=True, evaluation__bootstrap=20)
    assert _generate(cfg_path) == 0
    store = RunStore(tmp_path / "runs" / "run")
    ids = list(reports(store.dir)["id"])
    lock = store.parts / "merge.lock"
    clean = _merge_process(store.dir, "evaluation.bootstrap=21")  # how long finishing takes here, lock to exit
    while clean.poll() is None and not _held_by(lock, clean.pid):
        time.sleep(0.002)
    began = time.monotonic()
    assert clean.wait(timeout=120) == 0, clean.stderr.read()
    span = time.monotonic() - began
    rng = random.Random(16)
    before = {name: store.output(name).read_bytes() for name in OUTPUTS}
    for attempt in range(3):
        proc = _merge_process(store.dir, f"evaluation.bootstrap={30 + attempt}")
        while proc.poll() is None and not _held_by(lock, proc.pid):
            time.sleep(0.002)
        time.sleep(rng.uniform(0, span))
        proc.kill()
        proc.communicate()
        for name in OUTPUTS:
            now = store.output(name).read_bytes()
            assert now == before[name] or _whole(name, now, ids), name
            before[name] = now
    final = _merge_process(store.dir)  # finishes, taking over a lock a killed process left
    assert final.wait(timeout=120) == 0, final.stderr.read()
    for name in OUTPUTS:
        assert _whole(name, store.output(name).read_bytes(), ids)
