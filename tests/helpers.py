"""Helpers for tests that run generate_cxr.py: a manifest of the bundled images, a run configuration, the CLI,
and a run started in a subprocess and caught after it has committed rows."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from cxrgen import runstore

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "demo" / "images"


def write_manifest(folder: Path, n: int, broken: dict[int, str] | None = None) -> Path:
    """n studies cycling through the bundled images; ``broken`` maps a row to a bad image path."""
    images = sorted(IMAGES.glob("*.png"))
    rows = []
    for i in range(n):
        path = str(images[i % len(images)])
        if broken and i in broken:
            path = broken[i]
        rows.append({"id": f"S{i:03d}", "image_path": path, "reference": f"Report {i}: the lungs are clear, no effusion."})
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def make_config(tmp: Path, checkpoint: Path, manifest: Path, run_name: str = "run", **overrides) -> Path:
    """A run configuration file; ``section__key=value`` overrides any setting."""
    cfg = {
        "model": {"name_or_path": str(checkpoint), "device": "cpu"},
        "generation": {"batch_size": 4, "max_new_tokens": 24},
        "data": {"format": "manifest", "manifest": str(manifest), "split": "all"},
        "loader": {"num_workers": 0},
        "output": {"dir": str(tmp / "runs"), "run_name": run_name, "html": False},
        "evaluation": {"bootstrap": 50},
    }
    for key, value in overrides.items():
        section, name = key.split("__")
        cfg.setdefault(section, {})[name] = value
    path = tmp / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_cli(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, str(ROOT / "generate_cxr.py"), "--quiet", *args], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=timeout)


def reports(run_dir: Path) -> pd.DataFrame:
    return runstore.read_reports_csv(run_dir / "reports.csv", "reports.csv")


def committed_rows(run_dir: Path) -> int:
    try:
        return len(runstore.PartFile(run_dir / "parts" / "shard-0-of-1.csv").read())
    except (FileNotFoundError, runstore.RunError):  # not started yet, or a marker being replaced
        return 0


def start_until_committed(cfg_path: Path, run_dir: Path, rows: int, timeout: float = 90) -> subprocess.Popen:
    """generate_cxr.py in its own process group, returned once it has committed ``rows`` rows (still running)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "generate_cxr.py"), "--quiet", "--config", str(cfg_path)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + timeout
    while committed_rows(run_dir) < rows and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    return proc
