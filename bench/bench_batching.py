#!/usr/bin/env python
"""Static vs continuous batching on a realistic length distribution (CPU, tiny checkpoint).

Per-study report lengths are drawn from the token counts of the IU X-ray reference reports (bench/lengths.py);
each study stops exactly there (a never-</s> tiny checkpoint with the study's own token limit). Static batching
takes ``--batch-size`` studies, decodes them until the longest has ended, then takes the next batch; continuous
batching refills a slot as soon as its study ends. Both run in this process, alternately over ``--rounds`` rounds,
with the pipeline's thread setting; the reports of the two are checked to be identical. Decode steps are exact;
times are the median round.

  python bench/bench_batching.py                           # 256 studies, batch 32, limit 512
  python bench/bench_batching.py --reports ../shared/data/iu_xray_sample/reports --n 512
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.lengths import DEFAULT_REPORTS, describe, draw, token_counts  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="never-</s> tiny checkpoint (default: built in .cache/bench-tiny-never-eos)")
    p.add_argument("--reports", default=str(DEFAULT_REPORTS), help="folder of Open-i report XML files")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from PIL import Image

    from cxrgen.models.cxr_llava import CxrLlava
    from cxrgen.models.cxr_llava.decoding import DecodeStats, Request
    from cxrgen.models.cxr_llava.tiny import build_tiny_checkpoint
    from cxrgen.threads import configure_threads

    if args.checkpoint is None:
        args.checkpoint = str(ROOT / ".cache" / "bench-tiny-never-eos")
        if not Path(args.checkpoint).exists():
            build_tiny_checkpoint(args.checkpoint, seed=0, never_eos=True)
    model = CxrLlava.from_pretrained(args.checkpoint, device="cpu", dtype=args.dtype)
    threads = configure_threads(model.device)
    lengths = draw(token_counts(Path(args.checkpoint) / "tokenizer.model", Path(args.reports)), args.n,
                   args.max_new_tokens, args.seed)
    images = sorted((ROOT / "demo" / "images").glob("*.png"))
    pixels = [model.preprocess(Image.open(path)) for path in images]
    requests = [Request(i, pixels[i % len(pixels)], model.prompt_ids(), max_new_tokens=lengths[i])
                for i in range(args.n)]

    def run(mode: str):
        stats, out = DecodeStats(), {}
        t = time.perf_counter()
        if mode == "continuous":
            for done in model.stream_reports(requests, slots=args.batch_size, max_new_tokens=args.max_new_tokens,
                                             stats=stats):
                out.update(done)
        else:
            for start in range(0, args.n, args.batch_size):
                for done in model.stream_reports(requests[start:start + args.batch_size], slots=args.batch_size,
                                                 max_new_tokens=args.max_new_tokens, refill=False, stats=stats):
                    out.update(done)
        return time.perf_counter() - t, stats, out

    run("continuous")  # warm-up
    times: dict[str, list[float]] = {"static": [], "continuous": []}
    stats, outputs = {}, {}
    for _ in range(args.rounds):
        for mode in times:
            seconds, stats[mode], outputs[mode] = run(mode)
            times[mode].append(seconds)
    same = all(outputs["static"][i].token_ids == outputs["continuous"][i].token_ids for i in range(args.n))
    assert all(outputs["continuous"][i].n_new_tokens == lengths[i] for i in range(args.n)), "lengths not forced"
    ideal = sum(lengths) / args.batch_size
    print(f"\n{args.n} studies, batch {args.batch_size}, lengths {describe(lengths)} (from {args.reports}, "
          f"tokenizer of {args.checkpoint}); {args.dtype}, {threads} threads, CPU; median of {args.rounds} rounds; "
          f"reports identical: {same}\n")
    print("| batching | decode steps | rows x steps | of which live | seconds | reports/s | rounds (s) |")
    print("|---|---|---|---|---|---|---|")
    for mode, rows in times.items():
        s = stats[mode]
        print(f"| {mode} | {s.steps} | {s.row_steps} | {100 * s.live_row_steps / s.row_steps:.0f}% | "
              f"{statistics.median(rows):.2f} | {args.n / statistics.median(rows):.1f} | "
              f"{', '.join(f'{x:.2f}' for x in rows)} |")
    ratio = statistics.median(times["static"]) / statistics.median(times["continuous"])
    print(f"\nsum of lengths / batch = {ideal:.0f} steps (a full batch every step); continuous / static decode "
          f"steps: {stats['continuous'].steps / stats['static'].steps:.2f}; static / continuous time: {ratio:.2f}x")


if __name__ == "__main__":
    main()
