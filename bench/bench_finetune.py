#!/usr/bin/env python
"""Fine-tuning throughput: training tokens per second of finetune_cxr.py, end to end, per configuration.

Each configuration is one ``finetune_cxr.py`` process (imports, model load, ``--steps`` optimizer steps, the
outputs); tokens/s is the run's own figure from train.json: the prompt, image and reference tokens it trained on
(padding excluded) over the seconds of its training loop (model loading excluded). Validation and checkpoints run
once, at the last step. Peak memory: the process's max RSS and, on CUDA, its peak GPU memory (both recorded by the
run in train.json).

Without ``--checkpoint`` it builds a tiny random CXR-LLaVA checkpoint and trains on the bundled IU X-ray reports
(their impressions, 4 demo images in turn): the CPU figures of bench/RESULTS.md. With the real weights on a GPU:

  python bench/bench_finetune.py                                            # tiny, CPU, batch 1/4/8
  python bench/bench_finetune.py --checkpoint ECOFRI/CXR-LLAVA-v2 --device cuda --batch-sizes 1 4 \\
      --quantization none 4bit --steps 20 --out bench/results/finetune_gpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def dataset(folder: Path, n: int) -> Path:
    """A manifest of ``n`` training and 4 validation studies: the bundled demo images in turn, and the
    impressions of the bundled IU X-ray reports (their real lengths)."""
    import pandas as pd

    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import load_reports

    images = sorted((ROOT / "demo" / "images").glob("*.png"))
    reports = load_reports()
    rows = [{"id": f"B{i:04d}", "image_path": str(images[i % len(images)]), "reference": reports[i % len(reports)],
             "split": "train" if i < n else "val"} for i in range(n + 4)]
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def run(args, folder: Path, checkpoint: str, manifest: Path, batch: int, quantization: str) -> dict:
    name = f"b{batch}-{quantization}-{'gc' if args.gradient_checkpointing else 'nogc'}"
    cfg = {
        "model": {"name_or_path": checkpoint, "device": args.device, "dtype": args.dtype,
                  "quantization": quantization},
        "data": {"format": "manifest", "manifest": str(manifest)},
        "loader": {"num_workers": args.workers},
        "output": {"dir": str(folder / "runs")},
        "training": {"run_name": name, "max_steps": args.steps, "batch_size": batch, "gradient_accumulation": 1,
                     "eval_every": args.steps, "checkpoint_every": args.steps,
                     "gradient_checkpointing": args.gradient_checkpointing},
    }
    if args.prompt_user is not None:
        cfg["prompt"] = {"user": args.prompt_user}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    started = time.time()
    result = subprocess.run([sys.executable, str(ROOT / "finetune_cxr.py"), "--quiet", "--config", str(path)],
                            cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{name}: finetune_cxr.py exited {result.returncode}:\n{result.stderr[-3000:]}")
    record = json.loads((folder / "runs" / name / "train.json").read_text())
    start = record["starts"][-1]
    return {"config": name, "batch_size": batch, "quantization": quantization, "steps": record["schedule"]["steps"],
            "tokens": record["tokens"], "train_seconds": record["wall_seconds"],
            "tokens_per_second": record["tokens_per_second"],
            "studies_per_second": round(batch * record["schedule"]["steps"] / record["wall_seconds"], 2),
            "process_seconds": round(time.time() - started, 2), "device": start["device"], "dtype": start["dtype"],
            "peak_gpu_memory_gb": start.get("peak_gpu_memory_gb"), "max_rss_gb": start.get("peak_rss_gb"),
            "first_loss": record["steps"][0]["loss"], "last_loss": record["steps"][-1]["loss"]}


def table(rows: list[dict]) -> str:
    """The rows of :func:`run` as a Markdown table; a row with ``error`` or ``skipped`` shows that instead."""
    lines = ["| config | device, dtype | steps | tokens | training s | tokens/s | studies/s | max RSS GB | GPU peak GB "
             "| loss first / last |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['config']} | {(r.get('error') or r.get('skipped'))[-150:]} | | | | | | | | |")
            continue
        gpu = r["peak_gpu_memory_gb"] if r["peak_gpu_memory_gb"] is not None else "-"
        lines.append(f"| {r['config']} | {r['device']}, {r['dtype']} | {r['steps']} | {r['tokens']} | "
                     f"{r['train_seconds']} | {r['tokens_per_second']} | {r['studies_per_second']} | "
                     f"{r['max_rss_gb']} | {gpu} | {r['first_loss']:.3f} / {r['last_loss']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="a CXR-LLaVA or transformers checkpoint (default: a tiny random one)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--quantization", nargs="+", default=["none"])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--studies", type=int, default=64, help="training studies (the bundled reports in turn)")
    p.add_argument("--workers", default=0, help="loader.num_workers")
    p.add_argument("--prompt-user", help="prompt.user (the transformers backend needs one)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", help="write the rows as JSON here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as tmp:
        folder = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            from cxrgen.models.cxr_llava.tiny import build_tiny_checkpoint

            checkpoint = str(build_tiny_checkpoint(folder / "tiny", seed=0, shards=1))
        manifest = dataset(folder, args.studies)
        rows = [run(args, folder, checkpoint, manifest, b, q) for q in args.quantization for b in args.batch_sizes]
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
