#!/usr/bin/env python
"""bfloat16 vs bitsandbytes 4-bit (and optionally 8-bit) for the real-size CXR-LLaVA-v2 architecture on one GPU:
weight memory, peak memory, reports/s at a fixed batch, and how far the quantized greedy text drifts from bf16.

No download: the architecture is built as in bench_generate_gpu.py (ViT-L/16 on 512x512 grey, 1,024 image tokens,
Llama-2-7B; random weights, the </s> row of the output layer zeroed so every report is --max-new-tokens long). Each
mode rebuilds the same seeded weights, then (4bit/8bit) replaces the Llama linear layers exactly as a run with
``model.quantization`` does (cxrgen.models.quantization.quantize_linear_layers; vision tower, projector, embeddings
and lm_head stay bf16). Drift compares each quantized report with the bf16 report of the same image: the share of
positions with the same token and the first position where they differ. Random weights give flat next-token
distributions, so this drift is a pessimistic stand-in for that of the trained model.

  python bench/bench_quant_gpu.py --json quant.json          # CUDA machine with bitsandbytes, < 8 minutes
  python bench/bench_quant_gpu.py --tiny --device cpu        # the same code path at toy size (bf16 only)
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_generate_gpu import build  # noqa: E402

from cxrgen.config import ModelConfig  # noqa: E402
from cxrgen.models.base import ModelError  # noqa: E402
from cxrgen.models.quantization import check_quantization, quantize_linear_layers  # noqa: E402


def drift(reference: list[list[int]], other: list[list[int]]) -> dict:
    """Token agreement and first divergence of ``other`` against ``reference``, row by row."""
    agreement, first = [], []
    for ref, out in zip(reference, other):
        n = min(len(ref), len(out))
        same = [a == b for a, b in zip(ref[:n], out[:n])]
        agreement.append(sum(same) / max(len(ref), 1))
        differs = [i for i, s in enumerate(same) if not s]
        first.append(differs[0] if differs else (n if len(ref) != len(out) else None))
    diverged = [f for f in first if f is not None]
    return {"token_agreement": statistics.mean(agreement), "rows_identical": first.count(None),
            "first_divergence_median": statistics.median(diverged) if diverged else None,
            "first_divergence_min": min(diverged) if diverged else None, "first_divergence": first}


def run_mode(mode: str, args, device: torch.device, pixels: torch.Tensor) -> dict:
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    model = build(args.tiny, device, torch.bfloat16)
    if mode != "bf16":
        quantize_linear_layers(model.language_model, mode, skip=("lm_head",), device=device)
        if cuda:
            torch.cuda.empty_cache()
    load_s = time.time() - t0
    weights_gb = torch.cuda.memory_allocated() / 1e9 if cuda else None
    options = {}
    if "cuda_graphs" in inspect.signature(model.generate_reports).parameters:
        options["cuda_graphs"] = args.cuda_graphs
    model.generate_reports(pixels, max_new_tokens=8, **options)  # warm-up (kernels, allocator)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    reports = model.generate_reports(pixels, max_new_tokens=args.max_new_tokens, **options)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.time() - t
    tokens = sum(r.n_new_tokens for r in reports)
    row = {"mode": mode, "batch_size": len(reports), "build_s": load_s, "seconds": seconds,
           "reports_per_s": len(reports) / seconds, "tokens_per_s": tokens / seconds,
           "ms_per_step": 1000 * seconds / args.max_new_tokens, "weights_gb": weights_gb,
           "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
           "tokens": [r.token_ids for r in reports]}
    del model
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--modes", default="bf16,4bit", help="comma-separated: bf16 (always first), 4bit, 8bit")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--cuda-graphs", default="off", help="generation.cuda_graphs for every mode (default off)")
    p.add_argument("--tiny", action="store_true", help="toy sizes (to check the script without a GPU)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    device = torch.device(args.device)
    modes = ["bf16"] + [m for m in args.modes.split(",") if m and m != "bf16"]
    size = 64 if args.tiny else 512
    pixels = torch.randn(args.batch_size, 1, size, size, generator=torch.Generator().manual_seed(0))
    results, skipped = [], {}
    for mode in modes:
        if mode != "bf16":
            try:
                check_quantization(ModelConfig(device=str(device), quantization=mode))
            except ModelError as e:
                skipped[mode] = str(e)
                print(f"{mode}: skipped: {e}", file=sys.stderr)
                continue
        row = run_mode(mode, args, device, pixels)
        if mode != "bf16":
            row["drift"] = drift(results[0]["tokens"], row["tokens"])
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "tokens"}), file=sys.stderr)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{name}, batch {args.batch_size}, {args.max_new_tokens} new tokens per report, "
          f"cuda_graphs {args.cuda_graphs}\n")
    print("| mode | weights (GB) | peak GPU memory (GB) | reports/s | tokens/s | ms per step | token agreement "
          "with bf16 | first divergence (median, min) | rows identical |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        gb = (lambda v: f"{v:.2f}" if v is not None else "-")
        d = r.get("drift")
        agree = f"{d['token_agreement']:.3f}" if d else "-"
        first = f"{d['first_divergence_median']}, {d['first_divergence_min']}" if d else "-"
        same = f"{d['rows_identical']}/{r['batch_size']}" if d else "-"
        print(f"| {r['mode']} | {gb(r['weights_gb'])} | {gb(r['peak_gpu_gb'])} | {r['reports_per_s']:.2f} | "
              f"{r['tokens_per_s']:.0f} | {r['ms_per_step']:.1f} | {agree} | {first} | {same} |")
    for mode, why in skipped.items():
        print(f"\n{mode}: not measured: {why}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "args": vars(args), "results": results,
                                               "skipped": skipped}, indent=2))


if __name__ == "__main__":
    main()
