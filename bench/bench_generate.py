#!/usr/bin/env python
"""Report-generation speed and memory on a tiny CXR-LLaVA checkpoint (CPU), batch 1 vs 8/16/32.

Each configuration runs in its own process and is timed end to end from process start (imports, model load, all
reports), so peak memory (max RSS) is per configuration. Decoding goes through continuous batching (the pipeline's
path; ``--batching static`` for fixed batches) with the pipeline's thread setting (cxrgen.threads). Without
``--checkpoint`` the script builds a tiny checkpoint that never emits </s> (every report is --max-new-tokens long);
``--checkpoint tests/data/upstream_reference/tiny`` is one, built by the published code, whose reports stop at
varying lengths. ``--busy`` runs one CPU-spinning process beside every timed command. Optionally times the
published code in the same run (bench/run_published.py under a Python with transformers 4.36.2), or any other
command, for a side-by-side ratio.

  python bench/bench_generate.py                                   # 64 reports x 512 tokens, batch 1/8/16/32
  python bench/bench_generate.py --dtype bfloat16 --published-python /path/to/py436 --published-code DIR
  python bench/bench_generate.py --compare-command "CMD ..." --compare-name other
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args) -> None:
    t0 = float(os.environ["BENCH_T0"])
    import torch
    from PIL import Image

    from cxrgen.models.cxr_llava import CxrLlava
    from cxrgen.models.cxr_llava.decoding import DecodeStats, Request
    from cxrgen.threads import configure_threads

    t_import = time.time()
    model = CxrLlava.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype)
    configure_threads(model.device)
    t_load = time.time()
    images = sorted((ROOT / "demo" / "images").glob("*.png"))
    requests = [Request(i, model.preprocess(Image.open(images[i % len(images)])), model.prompt_ids())
                for i in range(args.n)]
    stats = DecodeStats()
    reports = []
    if args.batching == "continuous":
        for done in model.stream_reports(requests, slots=args.batch_size, max_new_tokens=args.max_new_tokens,
                                         stats=stats):
            reports += [r for _, r in done]
    else:
        for start in range(0, args.n, args.batch_size):
            for done in model.stream_reports(requests[start:start + args.batch_size], slots=args.batch_size,
                                             max_new_tokens=args.max_new_tokens, refill=False, stats=stats):
                reports += [r for _, r in done]
    tokens = sum(r.n_new_tokens for r in reports)
    limit_hits = sum(not r.stopped_at_eos for r in reports)
    t_end = time.time()
    print(json.dumps({
        "batch_size": args.batch_size, "reports": len(reports), "tokens": tokens, "limit_hits": limit_hits,
        "all_full_length": limit_hits == args.n, "decode_steps": stats.steps,
        "import_s": t_import - t0, "load_s": t_load - t_import, "generate_s": t_end - t_load, "total_s": t_end - t0,
        "reports_per_s": args.n / (t_end - t_load), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }))


def never_eos_copy(source: Path) -> Path:
    """A copy of ``source`` whose output layer can never pick </s> (its row zeroed; the random model's logits for
    the other tokens are then almost never all below 0): every report runs to the token limit."""
    import shutil

    from safetensors.torch import load_file, save_file

    target = ROOT / ".cache" / f"never-eos-{source.resolve().name}"
    if not target.exists():
        shutil.copytree(source, target)
        index = target / "model.safetensors.index.json"
        shard = target / (json.loads(index.read_text())["weight_map"]["lm_head.weight"] if index.exists()
                          else "model.safetensors")
        tensors = load_file(shard)
        weight = tensors["lm_head.weight"].clone()
        weight[2] = 0
        tensors["lm_head.weight"] = weight
        save_file(tensors, str(shard), metadata={"format": "pt"})
    return target


def timed(cmd: list[str], env=None, busy: bool = False) -> tuple[float, str]:
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    t0 = time.time()
    env = {**os.environ, **(env or {}), "BENCH_T0": str(t0)}
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return time.time() - t0, out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="tiny checkpoint folder (default: build one in .cache/bench-tiny-never-eos)")
    p.add_argument("--never-eos-of", help="use a copy of this checkpoint with the </s> row of its output layer "
                                          "zeroed (in .cache/), e.g. tests/data/upstream_reference/tiny")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-sizes", default="1,8,16,32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--batching", choices=["continuous", "static"], default="continuous")
    p.add_argument("--busy", action="store_true", help="one CPU-spinning process beside every timed command")
    p.add_argument("--published-python", help="Python with transformers 4.36.2 to run bench/run_published.py")
    p.add_argument("--published-code", help="folder holding the published CXR_LLAVA_HF package")
    p.add_argument("--compare-command", help="another command to time in the same run")
    p.add_argument("--compare-name", default="compare")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.never_eos_of:
        args.checkpoint = str(never_eos_copy(Path(args.never_eos_of)))
    if args.checkpoint is None:
        from cxrgen.models.cxr_llava.tiny import build_tiny_checkpoint

        args.checkpoint = str(ROOT / ".cache" / "bench-tiny-never-eos")
        if not Path(args.checkpoint).exists():
            build_tiny_checkpoint(args.checkpoint, seed=0, never_eos=True)
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        cmd = [sys.executable, __file__, "--worker", "--checkpoint", args.checkpoint, "--n", str(args.n),
               "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(bs), "--device", args.device,
               "--dtype", args.dtype, "--batching", args.batching]
        wall, out = timed(cmd, busy=args.busy)
        row = json.loads(out.strip().splitlines()[-1])
        row["wall_s"] = wall
        rows.append(row)
        print(f"batch {bs}: {wall:.2f} s end to end, {row['reports_per_s']:.2f} reports/s while generating, "
              f"peak RSS {row['peak_rss_mb']:.0f} MB", file=sys.stderr)
    compare = None
    if args.published_python:
        if args.max_new_tokens != 512:
            raise SystemExit("the published code always allows 512 new tokens: use --max-new-tokens 512")
        args.compare_command = shlex.join([args.published_python, str(ROOT / "bench" / "run_published.py"), "--code",
                                           args.published_code, "--model", args.checkpoint, "--n", str(args.n),
                                           "--dtype", args.dtype])
        args.compare_name = "published"
    if args.compare_command:
        compare, _ = timed(shlex.split(args.compare_command), busy=args.busy)
        print(f"{args.compare_name}: {compare:.2f} s end to end", file=sys.stderr)
    base = rows[0]
    print(f"\n{args.n} reports, at most {args.max_new_tokens} new tokens (mean {base['tokens'] / base['reports']:.0f}, "
          f"{base['limit_hits']} at the "
          f"limit), checkpoint {args.checkpoint}, device {args.device}, {args.dtype}, {args.batching} batching, "
          f"{base['threads']} threads, {'one busy process beside' if args.busy else 'nothing beside'}\n")
    print("| batch | end to end (s) | import (s) | load (s) | generate (s) | decode steps | reports/s (generate) | "
          "peak RSS (MB) | speed-up vs batch 1 (generate) |" + (f" {args.compare_name} / this (end to end) |"
                                                               if compare else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if compare else ""))
    for r in rows:
        extra = f" {compare / r['wall_s']:.1f}x |" if compare else ""
        print(f"| {r['batch_size']} | {r['wall_s']:.2f} | {r['import_s']:.2f} | {r['load_s']:.2f} | "
              f"{r['generate_s']:.2f} | {r['decode_steps']} | {r['reports_per_s']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{base['generate_s'] / r['generate_s']:.1f}x |{extra}")
    if compare:
        print(f"\n{args.compare_name}: {compare:.2f} s end to end")
    if len({(r["tokens"], r["limit_hits"]) for r in rows}) > 1:
        print("\nwarning: the batch sizes did not write the same number of tokens", file=sys.stderr)


if __name__ == "__main__":
    main()
