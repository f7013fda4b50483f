#!/usr/bin/env python
"""Reports/second of the real-size CXR-LLaVA-v2 architecture on one GPU, batch 1 vs 8 vs 32, bfloat16.

No download: the architecture is built from the published sizes (ViT-L/16 on 512x512 grey, 1024 image tokens,
Llama-2-7B) with random weights directly on the GPU; the output layer's </s> row is zeroed so that every report is
exactly --max-new-tokens long. Timing covers preprocessing-free generation (prefill + decode) of one batch after
one warm-up batch. Physical reference: a 7B model in bf16 reads ~14 GB per decode step (~4 ms per step at
~3.3 TB/s); prefill of ~1,100 tokens is ~15 TFLOP per image.

  python bench/bench_generate_gpu.py                     # on a CUDA machine
  python bench/bench_generate_gpu.py --tiny --device cpu  # the same code path at toy size, anywhere
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


def build(tiny: bool, device: torch.device, dtype: torch.dtype) -> CxrLlava:
    folder = Path(tempfile.mkdtemp())
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
    p.add_argument("--batch-sizes", default="1,8,32")
    p.add_argument("--max-new-tokens", type=int, default=512)
    p.add_argument("--tiny", action="store_true", help="toy sizes (to check the script without a GPU)")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    t0 = time.time()
    model = build(args.tiny, device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"built {n_params / 1e9:.2f} B parameters on {device} in {args.dtype} in {time.time() - t0:.1f} s",
          file=sys.stderr)
    size = model.config.vision.image_size
    results = []
    for bs in [int(b) for b in args.batch_sizes.split(",")]:
        pixels = torch.randn(bs, 1, size, size, generator=torch.Generator().manual_seed(bs))
        model.generate_reports(pixels, max_new_tokens=8)  # warm-up (kernels, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t = time.time()
        reports = model.generate_reports(pixels, max_new_tokens=args.max_new_tokens)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.time() - t
        tokens = sum(r.n_new_tokens for r in reports)
        row = {"batch_size": bs, "seconds": seconds, "reports_per_s": bs / seconds, "tokens_per_s": tokens / seconds,
               "ms_per_decode_step": 1000 * seconds / args.max_new_tokens,
               "all_full_length": all(r.n_new_tokens == args.max_new_tokens for r in reports),
               "peak_gpu_gb": torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else None}
        results.append(row)
        print(json.dumps(row), file=sys.stderr)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"\n{name}, {args.dtype}, {n_params / 1e9:.2f} B parameters, {args.max_new_tokens} new tokens per report\n")
    print("| batch | seconds | reports/s | tokens/s | ms per step (incl. prefill) | peak GPU memory (GB) | vs batch 1 |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        mem = f"{r['peak_gpu_gb']:.1f}" if r["peak_gpu_gb"] is not None else "-"
        print(f"| {r['batch_size']} | {r['seconds']:.1f} | {r['reports_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
              f"{r['ms_per_decode_step']:.1f} | {mem} | {r['reports_per_s'] / results[0]['reports_per_s']:.1f}x |")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "results": results}, indent=2))


if __name__ == "__main__":
    main()
