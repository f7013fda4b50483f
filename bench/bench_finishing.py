#!/usr/bin/env python
"""Where the finishing step's time goes (merge, evaluation, reports.csv and metrics.json, provenance, results page)
at 64, 2,400 and 20,000 studies, and how it grows.

A finished run of N studies is built through the run store: references and generated reports are the bundled IU
X-ray reports (each study's report is compared with another study's), images cycle through demo/images, one study
in 50 is an error row. It is then finished in a fresh process the way the last shard finishes it — ``cxrgen.runner``
already imported, the timer around ``cxrgen.finishing.finish`` — with a run's defaults: 1,000 bootstrap resamples,
the clinical metrics, the results page with thumbnails and plots. The phases come from run.json
(``finishing.seconds``). Each N runs ``--rounds`` times, each in a new process; the median is shown.
``--code DIR`` finishes the same run folders with another checkout of the project (a git worktree of an earlier
commit), for figures side by side.

  python bench/bench_finishing.py                                    # 64, 2400, 20000 studies, 3 rounds
  python bench/bench_finishing.py --studies 64 --rounds 5 --code /tmp/before
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_metrics import BUNDLED_REPORTS, load_reports  # noqa: E402

WORKER = """
import json, sys, time
import cxrgen.runner  # what the last shard has imported when it starts finishing
from cxrgen.finishing import finish
from cxrgen.runstore import RunStore
started = time.perf_counter()
code = finish(RunStore(sys.argv[1]))
print(json.dumps({"seconds": time.perf_counter() - started, "code": code}))
"""


def build_run(folder: Path, n: int) -> Path:
    """A finished run of ``n`` studies in ``folder``, written through the run store; returns the run folder."""
    from cxrgen.config import Config
    from cxrgen.runstore import ResultRow, RunPlan, RunStore

    texts = [text for _, text in load_reports(BUNDLED_REPORTS)]
    images = sorted((ROOT / "demo" / "images").glob("*.png"))
    cfg = Config.from_dict({"data": {"format": "manifest", "manifest": "unused.csv"},
                            "output": {"dir": str(folder), "run_name": f"run{n}", "html": True}})
    ids = [f"S{i:06d}" for i in range(n)]
    rows = [ResultRow(id=study, image_path=str(images[i % len(images)]), reference=texts[i % len(texts)],
                      generated_report="" if i % 50 == 7 else texts[(7 * i + 3) % len(texts)],
                      status="error" if i % 50 == 7 else "ok", error="unreadable" if i % 50 == 7 else "",
                      n_new_tokens=40, stopped_at_eos=True, seconds=0.01) for i, study in enumerate(ids)]
    store = RunStore(cfg.run_dir)
    plan = RunPlan(cfg, (0, 1), None, ids)
    with store.shard_lock((0, 1)) as lock:
        store.begin(plan, resume=True)
        writer = store.open_shard(plan, lock)
        writer.note_model({"backend": "bench", "source": "none", "device": "cpu"}, "prompt")
        for start in range(0, n, 256):
            writer.append(rows[start:start + 256])
        writer.end(ids, None)
    return store.dir


def finish_once(run_dir: Path, code: Path) -> dict:
    (run_dir / "run.json").unlink(missing_ok=True)  # so that the run is finished again
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", WORKER, str(run_dir)], cwd=code, env=env, capture_output=True,
                         text=True, check=True)
    wall = time.perf_counter() - started
    result = json.loads(out.stdout.strip().splitlines()[-1])
    info = json.loads((run_dir / "run.json").read_text())
    return {"process": wall, "finish": result["seconds"], "phases": info.get("finishing", {}).get("seconds", {})}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", type=int, nargs="+", default=[64, 2400, 20000])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--code", type=Path, action="append", default=[],
                   help="another checkout to finish the same runs with (repeatable); this one is always measured")
    args = p.parse_args()
    codes = [ROOT] + [c.resolve() for c in args.code]
    with tempfile.TemporaryDirectory() as tmp:
        print("| code | studies | finish (s) | per study (ms) | process (s) | phases (s) |")
        print("|---|---|---|---|---|---|")
        for n in args.studies:
            run_dir = build_run(Path(tmp), n)
            results = {code: [] for code in codes}
            for _ in range(args.rounds):  # interleaved, so that load changes hit every checkout alike
                for code in codes:
                    results[code].append(finish_once(run_dir, code))
            for code, runs in results.items():
                best = sorted(runs, key=lambda r: r["finish"])[len(runs) // 2]
                phases = ", ".join(f"{k} {v:.2f}" for k, v in best["phases"].items()) or "-"
                name = "this" if code == ROOT else code.name
                print(f"| {name} | {n:,} | {best['finish']:.2f} | {1000 * best['finish'] / n:.2f} | "
                      f"{statistics.median(r['process'] for r in runs):.2f} | {phases} |", flush=True)


if __name__ == "__main__":
    main()
