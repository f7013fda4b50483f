"""The README's walkthroughs run as written: "Rehearse offline" (a tiny checkpoint of every kind, three backends on
the demo studies, a comparison with evaluate.py) and "IU X-ray (Kaggle download)" on the demo's tiny checkpoint.
The commands are read from the README itself, so the test breaks when the README drifts; they run in a fresh copy
of the repository's files with the Hub switched off."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def bash_blocks(section: str) -> list[list[str]]:
    """The command lines (comments and blank lines dropped) of each ```bash block under the heading ``section``."""
    match = re.search(rf"^#{{2,}} {re.escape(section)}\n(.*?)(?=^#{{2,}} )", README, re.S | re.M)  # not bash's "# "
    assert match, f"README has no section {section!r}"
    blocks = re.findall(r"```bash\n(.*?)```", match.group(1), re.S)
    return [[line.split(" #")[0].strip() for line in block.splitlines()
             if line.strip() and not line.lstrip().startswith("#")] for block in blocks]


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """The repository's files (tracked, and new ones git does not ignore) in a fresh folder: no .cache, no runs."""
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    out = tmp_path_factory.mktemp("clone") / "cxrgen"
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, out / name)
    assert not (out / ".cache").exists() and not (out / "runs").exists()
    return out


def shell(command: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """One README line through bash, as a user would type it, with this interpreter first on PATH."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_comparison_walkthrough_runs_offline_as_written(clone):
    blocks = bash_blocks("Rehearse offline")
    assert blocks[0] == ["python -m cxrgen.models.tiny .cache/tiny"]
    walkthrough = blocks[1]
    assert sum(line.startswith("python generate_cxr.py") for line in walkthrough) == 3
    assert walkthrough[-1].startswith("python evaluate.py")
    for line in walkthrough:
        result = shell(line, clone)
        assert result.returncode == 0, f"{line}\n{result.stderr[-3000:]}"
    for kind in ("cxr-llava", "gemma3", "llava", "blip", "dinov2"):
        assert (clone / ".cache" / "tiny" / kind / "config.json").is_file(), kind
    backends = {}
    for run in ("cmp-cxr-llava", "cmp-gemma3", "cmp-retrieval"):
        info = json.loads((clone / "runs" / run / "run.json").read_text())
        backends[run] = info["model"]["backend"]
        assert info["counts"] == {**info["counts"], "selected": 4, "ok": 4, "error": 0}
    assert backends == {"cmp-cxr-llava": "cxr_llava", "cmp-gemma3": "transformers", "cmp-retrieval": "retrieval"}
    retrieved = pd.read_csv(clone / "runs" / "cmp-retrieval" / "reports.csv", keep_default_na=False)
    assert (retrieved["retrieved_id"] != retrieved["id"]).all() and (retrieved["leakage"] == "id,image").all()
    comparison = clone / "runs" / "retrieval-vs-cxr-llava-vs-gemma3"  # the folder the README names
    summary = json.loads((comparison / "summary.json").read_text())
    assert set(summary["systems"]) == {"retrieval", "cxr-llava", "gemma3"}
    assert {c["system"] for c in summary["comparisons"]} == {"cxr-llava", "gemma3"}
    assert (comparison / "report.html").is_file()


def kaggle_folder(root: Path, n: int = 60) -> Path:
    """An IU X-ray folder in the Kaggle layout from the first ``n`` bundled report XMLs and the demo images."""
    images = sorted((ROOT / "demo" / "images").glob("*.png"))
    (root / "images" / "images_normalized").mkdir(parents=True)
    reports, projections = [], []
    for k, path in enumerate(sorted((ROOT / "tests" / "data" / "iu_reports").glob("*.xml"),
                                    key=lambda p: int(p.stem))[:n]):
        sections = {a.get("Label"): (a.text or "").strip() for a in ET.parse(path).getroot().iter("AbstractText")}
        uid = path.stem
        reports.append({"uid": uid, "MeSH": "normal", "Problems": "normal", "image": "Xray Chest PA and Lateral",
                        "indication": "Chest pain.", "comparison": "None available.",
                        "findings": sections.get("FINDINGS") or "The lungs are clear.",
                        "impression": sections.get("IMPRESSION") or "No acute disease."})
        name = f"{uid}_IM-{k:04d}-1001.dcm.png"
        shutil.copy(images[k % len(images)], root / "images" / "images_normalized" / name)
        projections.append({"uid": uid, "filename": name, "projection": "Frontal"})
    pd.DataFrame(reports).to_csv(root / "indiana_reports.csv", index=False)
    pd.DataFrame(projections).to_csv(root / "indiana_projections.csv", index=False)
    return root


def test_the_iu_xray_commands_work_on_the_demo_checkpoint(clone, tmp_path):
    data = kaggle_folder(tmp_path / "iu")
    lines = [line.replace("/data/iu", str(data)) for line in bash_blocks("IU X-ray (Kaggle download)")[0]
             if line.startswith("python ")]
    make_split, real, rehearsal = lines
    assert "--make-split" in make_split and "model.name_or_path=.cache/tiny-cxr-llava" in rehearsal
    result = shell(make_split, clone)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "60 split into train 48, val 6, test 6" in result.stdout
    result = shell(real, clone)  # no real weights here: one line naming the command that fetches them
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "--download-model" in errors[0], result.stderr[-3000:]
    result = shell(rehearsal, clone)
    assert result.returncode == 0, result.stderr[-3000:]
    run = clone / "runs" / "cxr-llava-v2_iu-xray_test"
    rows = pd.read_csv(run / "reports.csv", keep_default_na=False)
    test_split = pd.read_csv(data / "indiana_test.csv", dtype=str)
    assert list(rows["id"].astype(str)) == list(test_split["uid"]) and (rows["status"] == "ok").all()
    assert json.loads((run / "run.json").read_text())["model"]["backend"] == "cxr_llava"
