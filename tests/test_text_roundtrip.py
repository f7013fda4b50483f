"""No text can break a row: reports and references of random code points through the part file, the merge,
reports.csv, the evaluation's reader, the results page, and a resume after a kill.

The model is a scripted backend (tests/helpers.py; it meets the interface of cxrgen.models.base): it writes
whatever text it is told to, so the whole pipeline sees every character a decoder could ever produce.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cxrgen import runner, runstore
from cxrgen.config import load_config
from cxrgen.datasets import load_studies
from helpers import ScriptedBackend

ROOT = Path(__file__).resolve().parents[1]
IMAGES = sorted((ROOT / "demo" / "images").glob("*.png"))

# Every C0 and C1 control (NUL included), line and paragraph separators, quotes, commas, a BOM, non-BMP text
# and lone surrogates, beside plain letters.
ALPHABET = ([chr(c) for c in range(0x00, 0x20)] + [chr(c) for c in range(0x7F, 0xA0)]
            + ["\r\n", "\u2028", "\u2029", '"', '""', ",", "'", "\ufeff", "é", "✓", "\U0001d538", "\ud800", "\udfff",
               " ", "a", "b", "XXXX", "=cmd", "\\", "\t"])


def hostile_text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.05:
        return ""
    if kind < 0.1:  # a very long line
        return "".join(rng.choice("abc ,\"") for _ in range(20_000)) + "\r"
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 60)))


def stored(text: str) -> str:
    """The documented replacements (cxrgen.runstore): NUL and lone surrogates become U+FFFD."""
    return "".join("\ufffd" if c == "\0" or 0xD800 <= ord(c) <= 0xDFFF else c for c in text)


def texts_for(n: int, seed: int) -> dict[str, str]:
    rng = random.Random(seed)
    return {f"S{i:03d}": hostile_text(rng) for i in range(n)}


def write_dataset(folder: Path, n: int, seed: int) -> Path:
    """A JSONL manifest whose references are hostile text too (JSON can carry every code point)."""
    rng = random.Random(seed + 1)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.jsonl"
    with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
        for i in range(n):
            reference = "ref " + hostile_text(rng) + " end"
            f.write(json.dumps({"id": f"S{i:03d}", "image_path": str(IMAGES[i % len(IMAGES)]),
                                "reference": reference}) + "\n")
    return path


def write_config(tmp: Path, manifest: Path, run_name: str, html: bool = True) -> Path:
    cfg = {"model": {"name_or_path": "unused", "backend": "cxr_llava", "device": "cpu"},
           "generation": {"batch_size": 4, "max_new_tokens": 8},
           "data": {"format": "manifest", "manifest": str(manifest), "split": "all"},
           "loader": {"num_workers": 0},
           "output": {"dir": str(tmp / "runs"), "run_name": run_name, "html": html},
           "evaluation": {"bootstrap": 20, "clinical": True}}
    path = tmp / f"{run_name}.yaml"
    path.write_text(yaml.safe_dump(cfg, allow_unicode=False))
    return path


def check_reports_csv(path: Path, texts: dict[str, str], references: dict[str, str]) -> None:
    want_hyp = {k: stored(v) for k, v in texts.items()}
    want_ref = {k: stored(v) for k, v in references.items()}
    # Python's csv module
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert {r["id"]: r["generated_report"] for r in rows} == want_hyp
    assert {r["id"]: r["reference"] for r in rows} == want_ref
    # pandas, plain
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    assert dict(zip(frame["id"], frame["generated_report"])) == want_hyp
    assert dict(zip(frame["id"], frame["reference"])) == want_ref
    # the project's own reader
    frame = runstore.read_reports_csv(path, str(path))
    assert dict(zip(frame["id"], frame["generated_report"])) == want_hyp


def test_part_file_round_trips_random_code_points(tmp_path):
    rng = random.Random(7)
    part = runstore.PartFile(tmp_path / "p.csv", "run")
    written = []
    for batch in range(12):
        rows = [runstore.ResultRow(id=hostile_text(rng) or f"id{batch}-{i}", image_path=hostile_text(rng),
                                   reference=hostile_text(rng), generated_report=hostile_text(rng), status="ok",
                                   error=hostile_text(rng), n_new_tokens=rng.randint(0, 600),
                                   stopped_at_eos=rng.random() < .5, seconds=rng.random())
                for i in range(rng.randint(1, 9))]
        assert part.append(rows) == len(rows)
        written += rows
    back = part.read()
    assert len(back) == len(written)
    for column in runstore.TEXT_COLUMNS:
        assert list(back[column]) == [stored(getattr(r, column)) for r in written], column
    for column in ("n_new_tokens", "stopped_at_eos", "seconds"):  # typed, exactly as written
        assert list(back[column]) == [getattr(r, column) for r in written], column
    # Python's csv module reads the committed bytes to the same rows
    rows = list(csv.DictReader(io.StringIO(part.path.read_bytes()[:part.committed_length()].decode("utf-8"), newline="")))
    assert [r["generated_report"] for r in rows] == [stored(r.generated_report) for r in written]


def test_run_merge_results_page_and_evaluation_reader_keep_every_character(tmp_path):
    texts = texts_for(30, seed=3)
    manifest = write_dataset(tmp_path, 30, seed=3)
    cfg = load_config(write_config(tmp_path, manifest, "hostile"))
    references = {s.id: s.reference for s in load_studies(cfg.data).studies}
    assert any("\x0b" in r or '"' in r for r in references.values())  # the references are hostile too
    assert runner.generate(cfg, model=ScriptedBackend(texts), progress=False) == runner.EXIT_OK
    run_dir = tmp_path / "runs" / "hostile"
    check_reports_csv(run_dir / "reports.csv", texts, references)

    from cxrgen import evaluation

    frame = evaluation.read_results_csv(run_dir / "reports.csv")
    assert dict(zip(frame["id"], frame["generated_report"])) == {k: stored(v) for k, v in texts.items()}

    page = (run_dir / "report.html").read_text(encoding="utf-8")
    data = json.loads(re.search(r'<script type="application/json" id="cxr-data">(.*?)</script>', page, re.S)[1])
    assert "</script" not in page.split('id="cxr-data">', 1)[1].split("</script>", 1)[0]
    found = json.dumps(data, ensure_ascii=False)
    for study_id, text in texts.items():
        if text and len(text) < 1000:
            assert json.dumps(stored(text), ensure_ascii=False)[1:-1] in found, study_id


def _run_in_subprocess(cfg_path: Path, texts_seed: int, n: int, delay: float):
    code = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); sys.path.insert(0, {str(ROOT)!r});"
            "import test_text_roundtrip as t; from helpers import ScriptedBackend; from cxrgen import runner;"
            "from cxrgen.config import load_config;"
            f"sys.exit(runner.generate(load_config({str(cfg_path)!r}), model=ScriptedBackend("
            f"t.texts_for({n}, {texts_seed}), delay={delay}), progress=False))")
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.parametrize("how", ["sigkill", "sigint"])
def test_hostile_text_survives_a_kill_and_resume(tmp_path, how):
    n = 24
    texts = texts_for(n, seed=5)
    manifest = write_dataset(tmp_path, n, seed=5)
    cfg_path = write_config(tmp_path, manifest, "killed", html=False)
    part = tmp_path / "runs" / "killed" / "parts" / "shard-0-of-1.csv"
    proc = _run_in_subprocess(cfg_path, 5, n, delay=0.4)
    deadline = time.time() + 60
    while time.time() < deadline:
        if part.exists() and len(runstore.PartFile(part).read()) >= 8:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL if how == "sigkill" else signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if how == "sigint":  # Ctrl-C: the rows in flight are finished and committed, one line, no traceback
        assert proc.returncode == runner.EXIT_SIGINT, err
        assert "Traceback" not in err and "run again to resume" in err
    committed = len(runstore.PartFile(part).read())
    assert 8 <= committed < n
    if how == "sigint":  # every study the model had taken was finished: the committed rows are a prefix, all ok
        rows = runstore.PartFile(part).read()
        assert list(rows["id"]) == sorted(texts)[:committed] and set(rows["status"]) == {"ok"}
    cfg = load_config(cfg_path)
    assert runner.generate(cfg, model=ScriptedBackend(texts), progress=False) == runner.EXIT_OK
    references = {s.id: s.reference for s in load_studies(cfg.data).studies}
    check_reports_csv(tmp_path / "runs" / "killed" / "reports.csv", texts, references)


def test_a_part_that_does_not_read_back_stops_the_shard_non_zero(tmp_path, monkeypatch):
    """The old writer (minimal quoting) lets a bare \\r split a row: the read-back check must catch it."""
    texts = {f"S{i:03d}": f"line one\rline two {i}" for i in range(6)}
    manifest = write_dataset(tmp_path, 6, seed=1)
    cfg = load_config(write_config(tmp_path, manifest, "broken", html=False))

    def minimal_quoting(rows, header):
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=runstore.COLUMNS, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        if header:
            writer.writeheader()
        writer.writerows([row.record() for row in rows])
        return buffer.getvalue().encode("utf-8")

    monkeypatch.setattr(runstore.parts, "rows_to_csv", minimal_quoting)
    with pytest.raises(runner.IncompleteShardError, match=r"shard-0-of-1\.csv.*do not read back"):
        runner.generate(cfg, model=ScriptedBackend(texts), progress=False)
    record = json.loads((tmp_path / "runs" / "broken" / "parts" / "shard-0-of-1.json").read_text())
    assert record["complete"] is False and "read back" in record["failure"]
    assert not (tmp_path / "runs" / "broken" / "reports.csv").exists()
    part = runstore.PartFile(tmp_path / "runs" / "broken" / "parts" / "shard-0-of-1.csv")
    assert part.path.stat().st_size > 0 and part.committed_length() == 0  # written, never committed

    # through the command line: exit 4, one line naming the part file
    import generate_cxr
    from cxrgen import models

    monkeypatch.setattr(models, "load", lambda model_cfg: ScriptedBackend(texts))
    code = generate_cxr.main(["--config", str(tmp_path / "broken.yaml"), "--quiet", "--no-resume"])
    assert code == runner.EXIT_INCOMPLETE
