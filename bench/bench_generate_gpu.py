#!/usr/bin/env python
"""Reports/second of the real-size CXR-LLaVA-v2 architecture on one GPU: static vs continuous batching, CUDA
graphs off vs on, report lengths drawn from the IU X-ray reference reports; bfloat16.

No download: the architecture is built from the published sizes (ViT-L/16 on 512x512 grey, 1024 image tokens,
Llama-2-7B) with random weights directly on the GPU; the output layer's </s> row is zeroed, and each study gets its
own token limit drawn from the token counts of the IU X-ray reference reports (bench/lengths.py), so each report
ends exactly at its drawn length. (A real </s> is seen up to 7 steps late on a GPU, where tokens are read back every
8 steps; forced limits are not, so continuous batching is measured up to that small optimism.) Each configuration
decodes the same --n studies after a warm-up; time covers prefill (image encoding + prompt) and decoding, not
image decoding from disk. Physical reference: a 7B model in bf16 reads ~14 GB per decode step (~4 ms per step at
~3.3 TB/s) plus the key/value cache (0.5 MiB per position per row: ~0.8 GB per row at full capacity); prefill of
~1,100 tokens is ~15 TFLOP per image. Under 8 minutes on an H100/H200 with the defaults.

  python bench/bench_generate_gpu.py --json gpu.json                # on a CUDA machine
  python bench/bench_generate_gpu.py --tiny --device cpu --n 12     # the same code path at toy size, anywhere
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.lengths import DEFAULT_REPORTS, describe, draw, token_counts  # noqa: E402

from cxrgen.models.cxr_llava import CxrLlava, CxrLlavaConfig, LlamaSentencePiece  # noqa: E402
from cxrgen.models.cxr_llava.tiny import tiny_config, train_tokenizer  # noqa: E402

REAL = {
    "clip_vision_cfg": {"image_size": 512, "layers": 24, "width": 1024, "head_width": 64, "mlp_ratio": 4.0,
                        "patch_size": 16},
    "clip_embed_dim": 768,
    "image_preprocess_cfg": {"mean": 0.5, "std": 0.25},
    "mm_projector_dim": 1024,
    "llama": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
              "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
              "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu", "tie_word_embeddings": False},
}


def build(tiny: bool, device: torch.device, dtype: torch.dtype, folder: Path) -> CxrLlava:
    train_tokenizer(folder)
    tokenizer = LlamaSentencePiece.from_dir(folder)
    raw = tiny_config(tokenizer.vocab_size) if tiny else REAL
    with torch.device("meta"):
        model = CxrLlava(CxrLlavaConfig.from_dict(raw), tokenizer)
    model.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                p.fill_(1.0) if name.endswith("weight") else p.zero_()
            else:
                p.normal_(0, 0.02, generator=generator)
            p.requires_grad_(False)
        model.language_model.lm_head.weight[tokenizer.eos_id] = 0
    model = model.to(dtype)
    model._materialise_buffers(device)
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--n", type=int, default=128, help="studies per configuration")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--batching", default="static,continuous")
    p.add_argument("--cuda-graphs", default=None, help="off,on (default: both on CUDA, off elsewhere)")
    p.add_argument("--reports", default=str(DEFAULT_REPORTS), help="Open-i report XML files for the lengths")
    p.add_argument("--tiny", action="store_true", help="toy sizes (to check the script without a GPU)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    from cxrgen.models.cxr_llava.decoding import DecodeStats, Request

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    t0 = time.time()
    folder = Path(tempfile.mkdtemp())
    model = build(args.tiny, device, dtype, folder)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {n_params / 1e9:.2f} B parameters on {device} in {args.dtype} in {time.time() - t0:.1f} s",
          file=sys.stderr)
    lengths = draw(token_counts(folder / "tokenizer.model", Path(args.reports)), args.n, args.max_new_tokens)
    size = model.config.vision.image_size
    pixels = torch.randn(args.n, 1, size, size, generator=torch.Generator().manual_seed(0))
    prompt = model.prompt_ids()
    requests = [Request(i, pixels[i], prompt, max_new_tokens=lengths[i]) for i in range(args.n)]
    graph_settings = args.cuda_graphs or ("off,on" if device.type == "cuda" else "off")
    configs = [(b, g) for b in args.batching.split(",") for g in graph_settings.split(",")]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(batching: str, graphs: str, todo):
        stats, out = DecodeStats(), {}
        groups = [todo] if batching == "continuous" else \
            [todo[i:i + args.batch_size] for i in range(0, len(todo), args.batch_size)]
        for group in groups:
            for done in model.stream_reports(group, slots=args.batch_size, max_new_tokens=args.max_new_tokens,
                                             refill=batching == "continuous", cuda_graphs=graphs, stats=stats):
                out.update(done)
        return stats, out

    results, outputs = [], {}
    for batching, graphs in configs:
        run(batching, graphs, requests[:args.batch_size + 2])  # warm-up: kernels, allocator, graph capture
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        sync()
        t = time.time()
        stats, out = run(batching, graphs, requests)
        sync()
        seconds = time.time() - t
        outputs[(batching, graphs)] = out
        tokens = sum(r.n_new_tokens for r in out.values())
        row = {"batching": batching, "cuda_graphs": graphs, "seconds": seconds, "reports_per_s": args.n / seconds,
               "tokens_per_s": tokens / seconds, "decode_steps": stats.steps, "row_steps": stats.row_steps,
               "live_fraction": stats.live_row_steps / max(stats.row_steps, 1), "prefills": stats.prefills,
               "graphs_captured": stats.graphs, "lengths_forced": all(out[i].n_new_tokens == lengths[i]
                                                                      for i in range(args.n)),
               "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
    first = outputs[configs[0]]
    agree = {f"{b}/{g}": sum(outputs[(b, g)][i].token_ids == first[i].token_ids for i in range(args.n))
             for b, g in configs}
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{name}, {args.dtype}, {n_params / 1e9:.2f} B parameters, batch {args.batch_size}, {args.n} studies, "
          f"lengths {describe(lengths)} (limit {args.max_new_tokens})\n")
    print("| batching | CUDA graphs | seconds | reports/s | tokens/s | decode steps | live rows | "
          "peak GPU memory (GB) | vs first row | same tokens as first row |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        mem = f"{r['peak_gpu_gb']:.1f}" if r["peak_gpu_gb"] is not None else "-"
        key = f"{r['batching']}/{r['cuda_graphs']}"
        print(f"| {r['batching']} | {r['cuda_graphs']} | {r['seconds']:.1f} | {r['reports_per_s']:.2f} | "
              f"{r['tokens_per_s']:.0f} | {r['decode_steps']} | {100 * r['live_fraction']:.0f}% | {mem} | "
              f"{r['reports_per_s'] / results[0]['reports_per_s']:.2f}x | {agree[key]}/{args.n} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "lengths": lengths, "results": results}, indent=2))


if __name__ == "__main__":
    main()
