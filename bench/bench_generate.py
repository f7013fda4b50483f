#!/usr/bin/env python
"""Report-generation speed and memory on a tiny CXR-LLaVA checkpoint (CPU), batch 1 vs 8/16/32.

Each configuration runs in its own process and is timed end to end from process start (imports, model load, all
reports), so peak memory (max RSS) is per configuration. The tiny checkpoint never emits </s>, so every report is
exactly --max-new-tokens long. Optionally times another command in the same run (e.g. the published code, one image
per call) for a side-by-side ratio.

  python bench/bench_generate.py                                   # 64 reports x 512 tokens, batch 1/8/16/32
  python bench/bench_generate.py --compare-command "CMD ..." --compare-name published
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

    t_import = time.time()
    model = CxrLlava.from_pretrained(args.checkpoint, device=args.device, dtype=args.dtype)
    t_load = time.time()
    images = sorted((ROOT / "demo" / "images").glob("*.png"))
    batch = [Image.open(images[i % len(images)]) for i in range(args.n)]
    tokens = 0
    limit_hits = 0
    for start in range(0, args.n, args.batch_size):
        for r in model.generate_reports(batch[start:start + args.batch_size], max_new_tokens=args.max_new_tokens):
            tokens += r.n_new_tokens
            limit_hits += not r.stopped_at_eos
    t_end = time.time()
    print(json.dumps({
        "batch_size": args.batch_size, "reports": args.n, "tokens": tokens, "all_full_length": limit_hits == args.n,
        "import_s": t_import - t0, "load_s": t_load - t_import, "generate_s": t_end - t_load, "total_s": t_end - t0,
        "reports_per_s": args.n / (t_end - t_load), "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
    }))


def timed(cmd: list[str], env=None) -> tuple[float, str]:
    t0 = time.time()
    env = {**os.environ, **(env or {}), "BENCH_T0": str(t0)}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if out.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    return time.time() - t0, out.stdout


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="tiny checkpoint folder (default: build one in .cache/bench-tiny-never-eos)")
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batch-sizes", default="1,8,16,32")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--compare-command", help="another command to time in the same run")
    p.add_argument("--compare-name", default="compare")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.checkpoint is None:
        from cxrgen.models.cxr_llava.tiny import build_tiny_checkpoint

        args.checkpoint = str(ROOT / ".cache" / "bench-tiny-never-eos")
        if not Path(args.checkpoint).exists():
            build_tiny_checkpoint(args.checkpoint, seed=0, never_eos=True)
    rows = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        cmd = [sys.executable, __file__, "--worker", "--checkpoint", args.checkpoint, "--n", str(args.n),
               "--max-new-tokens", str(args.max_new_tokens), "--batch-size", str(bs), "--device", args.device,
               "--dtype", args.dtype]
        wall, out = timed(cmd)
        row = json.loads(out.strip().splitlines()[-1])
        row["wall_s"] = wall
        rows.append(row)
        print(f"batch {bs}: {wall:.2f} s end to end, {row['reports_per_s']:.2f} reports/s while generating, "
              f"peak RSS {row['peak_rss_mb']:.0f} MB", file=sys.stderr)
    compare = None
    if args.compare_command:
        compare, _ = timed(shlex.split(args.compare_command))
        print(f"{args.compare_name}: {compare:.2f} s end to end", file=sys.stderr)
    base = rows[0]
    print(f"\n{args.n} reports x {args.max_new_tokens} new tokens, checkpoint {args.checkpoint}, device {args.device}, "
          f"{args.dtype}, {base['threads']} threads\n")
    print("| batch | end to end (s) | import (s) | load (s) | generate (s) | reports/s (generate) | peak RSS (MB) | "
          "speed-up vs batch 1 (generate) |" + (f" {args.compare_name} / this (end to end) |" if compare else ""))
    print("|---|---|---|---|---|---|---|---|" + ("---|" if compare else ""))
    for r in rows:
        extra = f" {compare / r['wall_s']:.1f}x |" if compare else ""
        print(f"| {r['batch_size']} | {r['wall_s']:.2f} | {r['import_s']:.2f} | {r['load_s']:.2f} | "
              f"{r['generate_s']:.2f} | {r['reports_per_s']:.1f} | {r['peak_rss_mb']:.0f} | "
              f"{base['generate_s'] / r['generate_s']:.1f}x |{extra}")
    if compare:
        print(f"\n{args.compare_name}: {compare:.2f} s end to end")
    if not all(r["all_full_length"] for r in rows):
        print("\nwarning: some reports stopped early; figures are not for full-length reports", file=sys.stderr)


if __name__ == "__main__":
    main()
