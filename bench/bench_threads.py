#!/usr/bin/env python
"""Decode-loop speed on the CPU with 1 vs 2 (or more) intra-op threads, alone and with a busy process beside it.

Each configuration runs in its own process (torch.set_num_threads before any work), timing continuous-batching
decoding of --n studies on a tiny checkpoint (the published code's tiny reference by default: reports of varying
length). "busy" starts one process spinning on the CPU (pure Python loop) for the duration of the measurement,
as another job on a shared node would. Configurations are interleaved over --rounds rounds; the median is shown.

  python bench/bench_threads.py                        # threads 1,2; quiet and busy; 3 rounds
  python bench/bench_threads.py --threads 1,2,4 --hidden 512
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.worker_threads)
    from cxrgen.models.cxr_llava import CxrLlava
    from cxrgen.models.cxr_llava.decoding import DecodeStats, Request

    model = CxrLlava.from_pretrained(args.checkpoint, device="cpu", dtype="float32")
    from PIL import Image

    images = sorted((ROOT / "demo" / "images").glob("*.png"))
    pixels = [model.preprocess(Image.open(p)) for p in images]
    requests = [Request(i, pixels[i % len(pixels)], model.prompt_ids()) for i in range(args.n)]
    list(model.stream_reports(requests[:2], slots=2, max_new_tokens=4))  # warm-up
    stats = DecodeStats()
    t = time.perf_counter()
    n = sum(len(d) for d in model.stream_reports(requests, slots=args.batch_size,
                                                  max_new_tokens=args.max_new_tokens, stats=stats))
    seconds = time.perf_counter() - t
    print(json.dumps({"seconds": seconds, "reports": n, "steps": stats.steps,
                      "ms_per_step": 1000 * seconds / max(stats.steps, 1), "threads": torch.get_num_threads()}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=str(ROOT / "tests" / "data" / "upstream_reference" / "tiny"))
    p.add_argument("--hidden", type=int, help="build a tiny checkpoint of this width instead (e.g. 512)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--n", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--worker-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.hidden:
        from cxrgen.models.cxr_llava.tiny import build_tiny_checkpoint

        args.checkpoint = str(ROOT / ".cache" / f"bench-tiny-h{args.hidden}")
        if not Path(args.checkpoint).exists():
            build_tiny_checkpoint(args.checkpoint, seed=0, hidden_size=args.hidden, heads=8, never_eos=True)
    configs = [(t, busy) for busy in (False, True) for t in (int(x) for x in args.threads.split(","))]
    results: dict = {c: [] for c in configs}
    for _ in range(args.rounds):
        for threads, busy in configs:
            spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            try:
                out = subprocess.run([sys.executable, __file__, "--worker", "--worker-threads", str(threads),
                                      "--checkpoint", args.checkpoint, "--n", str(args.n), "--batch-size",
                                      str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens)],
                                     capture_output=True, text=True, cwd=ROOT, check=True)
            finally:
                if spinner is not None:
                    spinner.kill()
                    spinner.wait()
            results[(threads, busy)].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"\n{args.n} studies, batch {args.batch_size}, max {args.max_new_tokens} new tokens, checkpoint "
          f"{args.checkpoint}; median of {args.rounds} rounds (all rounds in ms/step)\n")
    print("| threads | beside it | decode (s) | ms per step | rounds (ms per step) |")
    print("|---|---|---|---|---|")
    for (threads, busy), rows in results.items():
        ms = [r["ms_per_step"] for r in rows]
        print(f"| {threads} | {'one busy process' if busy else 'nothing'} | "
              f"{statistics.median(r['seconds'] for r in rows):.2f} | {statistics.median(ms):.2f} | "
              f"{', '.join(f'{m:.1f}' for m in ms)} |")


if __name__ == "__main__":
    main()
