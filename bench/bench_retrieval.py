#!/usr/bin/env python
"""The retrieval backend on the CPU: index build images/s and nearest-neighbour queries/s, with memory.

Sections, each in its own process (so that its peak memory is its own):

* ``build-tiny``: the index build of ``--studies`` (1,967: IU X-ray's train split) through the real code path —
  dataset selection, image reading and preprocessing in the loader workers, the encoder, one atomic batch file per
  batch, the finished index — with the tiny random DINOv2 encoder, so that what is measured is the pipeline around
  the model. The images are the 8 bundled demo images (512 px) repeated under distinct study ids.
* ``build-rad-dino``: the same with a randomly initialised encoder of RAD-DINO's size (DINOv2 ViT-B/14, 87 M
  parameters, 518 x 518 input; random weights: no Hub access here, and speed does not depend on the values), on
  the first ``--rad-dino-studies`` studies only: on a CPU the encoder dominates and a full build takes hours.
* ``search``: :func:`cxrgen.models.retrieval.search.nearest` alone on synthetic unit vectors of RAD-DINO's width
  (768) at 1,967 and 370,000 index rows (MIMIC-CXR's size), batches of 64 queries, k = 1 and 5, the default
  ``chunk_size`` 65,536; the index matrix's bytes and the process's peak resident memory.

A query of a run costs one encoder forward pass (the build's per-image time) plus its share of the search.
Threads: as a run sets them (``cxrgen.threads``: the allotted CPUs less one). Prints a Markdown table and, with
``--json FILE``, every figure.

  python bench/bench_retrieval.py                            # all sections
  python bench/bench_retrieval.py --sections search --json /tmp/retrieval.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SECTIONS = ("build-tiny", "build-rad-dino", "search")


def peak_mib() -> float:
    """The process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    """The process's resident memory now (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def write_manifest(folder: Path, n: int) -> Path:
    import pandas as pd

    images = sorted((ROOT / "demo" / "images").glob("*.png"))
    rows = [{"id": f"T{i:05d}", "image_path": str(images[i % len(images)]), "split": "train",
             "reference": f"Report of study {i}: the lungs are clear."} for i in range(n)]
    frame = pd.DataFrame(rows)
    path = folder / "manifest.csv"
    frame.to_csv(path, index=False)
    return path


def rad_dino_sized(folder: Path) -> Path:
    """A DINOv2 ViT-B/14 at 518 px with random weights (RAD-DINO's architecture) and a 518 px image processor."""
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from cxrgen.models.retrieval.tiny import _bit_processor

    config = Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4,
                          image_size=518, patch_size=14, layerscale_value=1e-5)
    torch.manual_seed(0)
    Dinov2Model(config).save_pretrained(folder)
    _bit_processor(518).save_pretrained(folder)
    return folder


def build(kind: str, studies: int, batch_size: int, workers: str, device: str = "cpu",
          dtype: str = "float32") -> dict:
    """The index build of ``studies`` with the tiny or the RAD-DINO-sized encoder on ``device`` in ``dtype``."""
    from cxrgen.config import Config
    from cxrgen.models.retrieval.encoder import load_encoder
    from cxrgen.models.retrieval.index import open_index
    from cxrgen.models.retrieval.tiny import build_tiny_dinov2
    from cxrgen.threads import configure_threads

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        encoder_dir = build_tiny_dinov2(tmp / "enc") if kind == "tiny" else rad_dino_sized(tmp / "enc")
        cfg = Config.from_dict({
            "model": {"backend": "retrieval", "name_or_path": str(encoder_dir), "device": device, "dtype": dtype},
            "generation": {"batch_size": batch_size},
            "data": {"format": "manifest", "manifest": str(write_manifest(tmp, studies)), "split": "train"},
            "loader": {"num_workers": workers if workers == "auto" else int(workers)},
            "retrieval": {"index_dir": str(tmp / "index")}})
        _sync(device, reset_peak=True)
        encoder = load_encoder(cfg)
        threads = configure_threads(encoder.device)
        _sync(encoder.device)
        started = time.perf_counter()
        index = open_index(cfg, encoder)
        _sync(encoder.device)
        seconds = time.perf_counter() - started
        size = sum(f.stat().st_size for f in index.folder.iterdir())
    return {"section": f"build-{kind}", "studies": studies, "batch_size": batch_size, "threads": threads,
            "loader_workers": workers, "device": str(encoder.device),
            "dtype": str(encoder.model.dtype).replace("torch.", ""), "seconds": round(seconds, 2),
            "images_per_s": round(studies / seconds, 2),
            "dim": encoder.dim, "index_bytes": size, "peak_rss_mib": round(peak_mib(), 1),
            "peak_gpu_mib": _peak_gpu_mib(encoder.device)}


def _sync(device, reset_peak: bool = False) -> None:
    """Wait for the device's work (CUDA); ``reset_peak``: and start its peak-memory count afresh."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(device)


def _peak_gpu_mib(device) -> float | None:
    import torch

    device = torch.device(device)
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1) if device.type == "cuda" else None


def search(rows: int, dim: int, batch: int, ks: tuple[int, ...], repeats: int, device: str = "cpu") -> list[dict]:
    """:func:`nearest` alone on ``rows`` random unit vectors of width ``dim`` held on ``device``."""
    import numpy as np
    import torch

    from cxrgen.config import RetrievalConfig
    from cxrgen.models.retrieval.search import nearest
    from cxrgen.threads import configure_threads

    device = torch.device(device)
    _sync(device, reset_peak=True)
    threads = configure_threads(device)
    rng = np.random.default_rng(0)
    matrix = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, 65_536):  # in pieces: no second copy of the index in memory
        piece = rng.standard_normal((min(65_536, rows - start), dim), dtype=np.float32)
        matrix[start:start + len(piece)] = piece / np.linalg.norm(piece, axis=1, keepdims=True)
    index = torch.from_numpy(matrix).to(device)
    loaded = rss_mib()
    queries = torch.nn.functional.normalize(torch.from_numpy(rng.standard_normal((batch, dim), dtype=np.float32)),
                                            dim=1).to(device)
    chunk = RetrievalConfig().chunk_size
    out = []
    for k in ks:
        nearest(queries, index, k, chunk)  # warm-up
        _sync(device)
        started = time.perf_counter()
        for _ in range(repeats):
            nearest(queries, index, k, chunk)
        _sync(device)
        seconds = (time.perf_counter() - started) / repeats
        out.append({"section": "search", "index_rows": rows, "dim": dim, "k": k, "batch": batch, "threads": threads,
                    "device": str(device), "chunk_size": chunk, "ms_per_batch": round(seconds * 1000, 2),
                    "queries_per_s": round(batch / seconds, 1), "index_mib": round(matrix.nbytes / 2 ** 20, 1),
                    "rss_with_index_mib": round(loaded, 1), "peak_rss_mib": round(peak_mib(), 1),
                    "peak_gpu_mib": _peak_gpu_mib(device)})
    return out


def run_section(args, section: str) -> list[dict]:
    """One section in a fresh process; its JSON lines back."""
    command = [sys.executable, __file__, "--child", section, "--studies", str(args.studies),
               "--rad-dino-studies", str(args.rad_dino_studies), "--batch-size", str(args.batch_size),
               "--workers", args.workers]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"section {section} failed:\n{result.stderr[-3000:]}")
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def child(args) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.child == "build-tiny":
        rows = [build("tiny", args.studies, args.batch_size, args.workers)]
    elif args.child == "build-rad-dino":
        rows = [build("rad-dino", args.rad_dino_studies, args.batch_size, args.workers)]
    else:
        rows = []
        for n in (1_967, 370_000):
            rows += search(n, 768, 64, (1, 5), repeats=20 if n < 10_000 else 3)
    for row in rows:
        print(json.dumps(row))


def table(rows: list[dict]) -> str:
    """The rows of :func:`build` and :func:`search` as a Markdown table (with the GPU's peak where there is one)."""
    lines = ["| what | size | rate | time | memory |", "|---|---|---|---|---|"]
    for r in rows:
        gpu = f"; GPU peak {r['peak_gpu_mib']} MiB" if r.get("peak_gpu_mib") is not None else ""
        if r["section"].startswith("build"):
            encoder = "tiny DINOv2 (pipeline)" if r["section"] == "build-tiny" else "RAD-DINO-sized DINOv2 (random)"
            lines.append(f"| index build, {encoder}, {r['dtype']} on {r['device']}, batch {r['batch_size']}, "
                         f"{r['threads']} thread(s), {r['loader_workers']} loader workers | {r['studies']:,} studies | "
                         f"{r['images_per_s']} images/s | {r['seconds']} s | peak RSS {r['peak_rss_mib']} MiB, "
                         f"index {r['index_bytes'] / 2 ** 20:.1f} MiB{gpu} |")
        else:
            lines.append(f"| search, k = {r['k']}, batches of {r['batch']}, on {r['device']}, {r['threads']} "
                         f"thread(s) | {r['index_rows']:,} x {r['dim']} | {r['queries_per_s']:,} queries/s | "
                         f"{r['ms_per_batch']} ms per batch | index {r['index_mib']} MiB; RSS with it "
                         f"{r['rss_with_index_mib']} MiB, peak {r['peak_rss_mib']} MiB{gpu} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--studies", type=int, default=1_967, help="build-tiny: studies in the index")
    parser.add_argument("--rad-dino-studies", type=int, default=32, help="build-rad-dino: studies in the index")
    parser.add_argument("--batch-size", type=int, default=16, help="generation.batch_size of the build")
    parser.add_argument("--workers", default="auto", help="loader.num_workers of the build")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument("--child", choices=SECTIONS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    rows = []
    for section in args.sections.split(","):
        rows += run_section(args, section.strip())
    print(f"CPU: {os.cpu_count()} cores\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
