#!/usr/bin/env python
"""The GPU check: correctness and speed of report generation, fine-tuning and retrieval on one CUDA GPU, in one
command (bench/gpu_check.sh).

Each section runs in its own process (a crash or an out-of-memory error stays in its section), in this order, each
with its own time limit and all together within ``--budget`` seconds; a section the budget cannot fit is skipped:

  env           the device and library versions; the two ceilings measured here: device-to-device copy bandwidth
                and the bf16 matrix-product rate
  pytest        the tests marked ``cuda`` (tests/test_cuda.py): the published code's tokens in float32 on CUDA
                (CUDA graphs on/off, continuous/static, fixed shapes), fixed shapes making bf16 reports of a tiny
                checkpoint independent of their batch, a bf16 run killed and resumed through generate_cxr.py, the
                transformers backend against transformers' generate on CUDA, 4/8-bit loading of a tiny checkpoint
  throughput    CXR-LLaVA-v2 at its real size (random weights, bf16): reports/s and tokens/s at batch 1, 32 and 64
                with report lengths drawn from IU X-ray; static vs continuous batching, CUDA graphs on vs off, fixed
                shapes; prefill tokens/s; peak memory; the decode step against its memory floor over the whole cache
                capacity and over the live length
  invariance    the same studies at batch 1, 8 and 32 and stopped-and-resumed at 32, bf16 at real size and fp32 at
                real widths with 4 layers per tower: how many reports differ, by default and with fixed shapes
  kernels       where the differences come from: each kernel of the decode step at its real shapes, bit for bit
                (twice, other rows, another row, batch 1, stale masked cache values; each attention backend), then
                fixed-shape runs end to end (twice, resumed, batch 1, stale cache, graphs off) and a default run twice
  quant         real size, bf16 vs bitsandbytes 8-bit and 4-bit: weight and peak memory, reports/s, token drift,
                whether the quantized decode step can be captured as a CUDA graph
  transformers  the transformers backend on Gemma-3 at MedGemma-4B's size (random weights): reports/s at batch 16,
                bf16 and 4-bit

Two more sections run only when named (``--sections finetune,retrieval``, or ``--sections all``), in a second call of
under 8 minutes, so that the generation sections keep theirs; each first runs its own tests marked ``cuda``:

  finetune      tests/test_cuda_finetune.py (fine-tuning on CUDA in fp32 and bf16 memorises and generation writes
                the references with its adapter; QLoRA and 4-bit generation with its adapter), then
                finetune_cxr.py end to end (bench/bench_finetune.py, one process per configuration) on CXR-LLaVA-v2 at
                its real size, random weights written to local disk in the published layout: training tokens/s,
                studies/s and peak GPU memory at batch 1 and 4 (bf16, gradient checkpointing) and QLoRA at batch 4
  retrieval     tests/test_cuda_retrieval.py (CUDA retrieves what the CPU retrieves), then the retrieval backend
                (bench/bench_retrieval.py): the index build through the real pipeline with a
                RAD-DINO-sized encoder (random weights) in bf16 and fp32, images/s; the exact search alone on
                370,000 x 768 vectors (MIMIC-CXR's size) on the GPU, queries/s

Writes OUT/<section>.json as each section ends, then OUT/gpu_check.json (everything) and OUT/gpu_check.md (the
tables that go into bench/RESULTS.md), and prints the tables. ``--cpu-smoke`` runs every section at toy sizes on the
CPU (what needs CUDA says so and is skipped), so the test suite keeps this script working between GPU sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

#: (name, time limit in seconds on a GPU)
SECTIONS = [("env", 60), ("pytest", 150), ("throughput", 180), ("invariance", 150), ("kernels", 90),
            ("quant", 150), ("transformers", 120), ("finetune", 360), ("retrieval", 150)]
#: what runs unless --sections names others: the generation check (< 8 minutes on an H100/H200)
DEFAULT_SECTIONS = ("env", "pytest", "throughput", "invariance", "kernels", "quant", "transformers")
TARGET_REPORTS_PER_S = 15.0  # CXR-LLaVA-v2 at batch 32-64 on one H200


# -- helpers shared by the sections ------------------------------------------------------------------------------

class Clock:
    """Wall time of device work: synchronises before reading the host clock."""

    def __init__(self, device):
        self.device = device

    def sync(self):
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def __enter__(self):
        self.sync()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.sync()
        self.seconds = time.perf_counter() - self.t0


def peak_gb(device) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None


def reset_peak(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def first_divergence(a: list[int], b: list[int]) -> int | None:
    """First position where two token lists differ (None: identical)."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def compare(runs: dict, reference: dict) -> dict:
    """How many reports of ``runs`` differ from ``reference`` (key -> token ids), and where they first differ."""
    firsts = [first_divergence(runs[k], reference[k]) for k in reference]
    differ = [f for f in firsts if f is not None]
    return {"differ": len(differ), "of": len(reference),
            "first_divergence_median": statistics.median(differ) if differ else None}


def stream(model, requests, *, stop_after: int | None = None, **kwargs) -> dict:
    """key -> report of ``model.stream_reports``; ``stop_after``: close the stream after that many reports (a run
    stopped in the middle: the rows in flight are lost, as in a killed run)."""
    out, reports = {}, model.stream_reports(requests, **kwargs)
    for done in reports:
        out.update(done)
        if stop_after is not None and len(out) >= stop_after:
            reports.close()
            break
    return out


def requests_for(model, n: int, lengths: list[int] | None = None, seed: int = 0):
    import torch

    from cxrgen.models.cxr_llava.decoding import Request

    size = model.config.vision.image_size
    pixels = torch.randn(n, 1, size, size, generator=torch.Generator().manual_seed(seed))
    prompt = model.prompt_ids()
    return [Request(i, pixels[i], prompt, max_new_tokens=None if lengths is None else lengths[i]) for i in range(n)]


def iu_lengths(folder: Path, n: int, limit: int) -> list[int]:
    from lengths import DEFAULT_REPORTS, draw, token_counts

    return draw(token_counts(folder / "tokenizer.model", DEFAULT_REPORTS), n, limit)


# -- sections ------------------------------------------------------------------------------------------------------

def section_env(args, device) -> dict:
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"}
    for name in ("transformers", "peft", "bitsandbytes", "accelerate", "numpy", "pandas"):
        try:
            out[name] = __import__(name).__version__
        except Exception as e:  # missing, or broken on this machine
            out[name] = f"not available ({type(e).__name__})"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        out.update(capability=f"{props.major}.{props.minor}", memory_gb=props.total_memory / 1e9,
                   multiprocessors=props.multi_processor_count)
        try:
            out["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            out["driver"] = None
    nbytes = (64 if args.cpu_smoke else 2048) << 20
    x = torch.empty(nbytes, dtype=torch.uint8, device=device).random_()
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    with Clock(device) as c:
        for _ in range(20):
            y.copy_(x)
    out["copy_gb_per_s"] = 2 * nbytes * 20 / c.seconds / 1e9  # bytes read + written
    del x, y
    n = 512 if args.cpu_smoke else 8192
    dtype = torch.float32 if args.cpu_smoke else torch.bfloat16
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    with Clock(device) as c:
        for _ in range(10):
            a @ b
    out["matmul_tflop_per_s"] = 2 * n ** 3 * 10 / c.seconds / 1e12
    out["matmul_dtype"] = str(dtype).replace("torch.", "")
    return out


def run_tests(args, file: str) -> dict:
    """The tests marked ``cuda`` in ``file``, in a pytest process: counts, each test's outcome, the output's tail;
    ``failures`` names the file when pytest fails (exit 5, no test collected, is not a failure)."""
    import xml.etree.ElementTree as ET

    report = Path(args.out) / f"{Path(file).stem}.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", file, "-p", "no:cacheprovider",
           f"--junitxml={report}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tests = []
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            outcome, message = "passed", ""
            for tag in ("failure", "error", "skipped"):
                node = case.find(tag)
                if node is not None:
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                    message = (node.get("message") or "").splitlines()[0][:300] if node.get("message") else ""
            tests.append({"test": case.get("name"), "outcome": outcome, "message": message})
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    result = {"command": " ".join(cmd[1:]), "exit_code": proc.returncode, "counts": counts, "tests": tests,
              "tail": proc.stdout[-3000:] + proc.stderr[-2000:]}
    if proc.returncode not in (0, 5):
        result["failures"] = [f"{file}: pytest exited {proc.returncode}"]
    return result


def section_pytest(args, device) -> dict:
    return run_tests(args, "tests/test_cuda.py")


def section_throughput(args, device) -> dict:
    import torch

    from cxrgen.models.cxr_llava.decoding import DecodeStats, Shapes
    from realsize import build_cxr_llava

    smoke = args.cpu_smoke
    folder = Path(tempfile.mkdtemp())
    with Clock(device) as c:
        model = build_cxr_llava(folder, device, torch.bfloat16, tiny=smoke)
    out = {"build_s": c.seconds, "parameters_b": sum(p.numel() for p in model.parameters()) / 1e9,
           "max_new_tokens": 512, "runs": []}
    on = "on" if device.type == "cuda" else "off"  # CUDA graphs where they exist
    n1, (n32, b32), (n64, b64) = (6, (12, 4), (16, 8)) if smoke else (12, (64, 32), (128, 64))
    lengths = iu_lengths(folder, max(n64, n32), 512)
    out["lengths"] = {"mean": statistics.mean(lengths), "median": statistics.median(lengths), "max": max(lengths)}
    configs = [(1, n1, "continuous", on, "default"), (b32, n32, "static", on, "default"),
               (b32, n32, "continuous", "off", "default")]
    configs += [(b32, n32, "continuous", "on", "default")] if on == "on" else []
    configs += [(b32, n32, "continuous", on, "fixed"), (b64, n64, "continuous", on, "default"),
                (b64, n64, "continuous", on, "fixed")]
    named = {"default": None, "fixed": Shapes(fixed=True)}
    first_tokens: dict = {}
    for batch, n, batching, graph, shapes in configs:
        requests = requests_for(model, n, lengths[:n])

        def run(todo, stats):
            done = {}
            groups = [todo] if batching == "continuous" else [todo[i:i + batch] for i in range(0, len(todo), batch)]
            for group in groups:
                done.update(stream(model, group, slots=batch, max_new_tokens=512, refill=batching == "continuous",
                                   cuda_graphs=graph, shapes=named[shapes], stats=stats))
            return done

        run(requests[:batch + 2], DecodeStats())  # warm-up: kernels, allocator
        reset_peak(device)
        stats = DecodeStats()
        with Clock(device) as c:
            done = run(requests, stats)
        tokens = sum(r.n_new_tokens for r in done.values())
        key = (batch, n)
        ids = {k: r.token_ids for k, r in done.items()}
        same = None
        if key in first_tokens:
            same = sum(ids[k] == first_tokens[key][k] for k in ids)
        else:
            first_tokens[key] = ids
        row = {"batch": batch, "studies": n, "batching": batching, "cuda_graphs": graph, "shapes": shapes,
               "seconds": c.seconds, "reports_per_s": n / c.seconds, "tokens_per_s": tokens / c.seconds,
               "decode_steps": stats.steps, "live_rows": stats.live_row_steps / max(stats.row_steps, 1),
               "graphs_captured": stats.graphs, "capture_s": stats.capture_seconds,
               "lengths_forced": all(done[i].n_new_tokens == lengths[i] for i in range(n)),
               "same_tokens_as_first_config": same, "peak_gb": peak_gb(device)}
        out["runs"].append(row)
        log(f"throughput {row}")
    out["prefill"] = prefill_rates(model, device, [1, 8] if smoke else [1, 8, 32])
    out["step"] = step_times(model, device, [1, 4] if smoke else [1, 32, 64], args)
    return out


def prefill_rates(model, device, passes: list[int]) -> list[dict]:
    """Image encoding + prompt prefill: ``p`` studies per pass (slots = p, a one-token limit, so a study is done
    after its prefill)."""
    rows = []
    for p in passes:
        n = max(passes) * 2
        requests = requests_for(model, n)
        stream(model, requests[:p], slots=p, max_new_tokens=1, cuda_graphs="off")  # warm-up
        with Clock(device) as c:
            stream(model, requests, slots=p, max_new_tokens=1, refill=True, cuda_graphs="off")
        prompt = len(requests[0].prompt.before) + model.config.vision.num_patches + len(requests[0].prompt.after)
        rows.append({"studies_per_pass": p, "studies": n, "prompt_tokens": prompt, "seconds": c.seconds,
                     "ms_per_study": 1000 * c.seconds / n, "tokens_per_s": n * prompt / c.seconds})
        log(f"prefill {rows[-1]}")
    return rows


def step_times(model, device, widths: list[int], args) -> list[dict]:
    """One decode step (as a CUDA graph on a GPU, eager on the CPU) over the whole cache capacity and over the live
    length only, against its memory floor: the language model's weights (the embedding table aside: a step reads
    only its rows) plus the keys and values it attends over, at the copy bandwidth measured by ``env``."""
    import torch

    from cxrgen.models.cxr_llava.decoding import DecodeStep, attention_dtype

    lm = model.language_model
    prompt = len(model.prompt_ids().before) + model.config.vision.num_patches + len(model.prompt_ids().after)
    capacity = prompt + 512
    live = prompt + 75  # a report in the middle of an IU X-ray-length report
    step = DecodeStep(model, capacity)
    n_layers, n_kv, hd = len(lm.model.layers), step.n_kv, step.head_dim
    adt = attention_dtype(model.dtype, device)
    weight_bytes = sum(p.numel() * p.element_size() for n, p in lm.named_parameters() if "embed_tokens" not in n)
    env = Path(args.out) / "env.json"
    bandwidth = json.loads(env.read_text()).get("copy_gb_per_s") if env.exists() else None
    rows = []
    for width in widths:
        caches_k = [torch.randn(width, n_kv, capacity, hd, device=device, dtype=adt) for _ in range(n_layers)]
        caches_v = [torch.randn_like(k) for k in caches_k]
        tokens = torch.randint(0, model.config.vocab_size, (width,), device=device)
        positions = torch.full((width,), live - 1, dtype=torch.long, device=device)
        row = {"width": width, "capacity": capacity, "live_length": live}
        for name, keys in (("full", None), ("live", live)):
            def once():
                return step(tokens, positions, caches_k, caches_v, keys=keys)

            run = once
            if device.type == "cuda":
                side = torch.cuda.Stream(device)
                side.wait_stream(torch.cuda.current_stream(device))
                with torch.cuda.stream(side):
                    once(), once()
                torch.cuda.current_stream(device).wait_stream(side)
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    once()
                run = graph.replay
            for _ in range(3):
                run()
            repeats = 5 if args.cpu_smoke else 50
            with Clock(device) as c:
                for _ in range(repeats):
                    run()
            ms = 1000 * c.seconds / repeats
            attended = capacity if keys is None else keys
            kv_bytes = width * attended * n_layers * 2 * n_kv * hd * torch.finfo(adt).bits // 8
            floor = 1000 * (weight_bytes + kv_bytes) / (bandwidth * 1e9) if bandwidth else None
            row[name] = {"ms": ms, "kv_gb": kv_bytes / 1e9, "floor_ms": floor,
                         "floor_share": floor / ms if floor else None}
        row["weights_gb"] = weight_bytes / 1e9
        row["attention_beyond_live_share"] = (row["full"]["ms"] - row["live"]["ms"]) / row["full"]["ms"]
        rows.append(row)
        log(f"step {row}")
        del caches_k, caches_v
    return rows


def section_invariance(args, device) -> dict:
    import torch

    from cxrgen.models.cxr_llava.decoding import Shapes
    from realsize import build_cxr_llava

    smoke = args.cpu_smoke
    n, limit = (12, 16) if smoke else (64, 32)
    batches = [1, 2, 4] if smoke else [1, 8, 32]
    big, stop = batches[-1], (5 if smoke else 20)
    graphs = "on" if device.type == "cuda" else "off"
    variants = {"default": None, "fixed": Shapes(fixed=True)}
    out = {"studies": n, "max_new_tokens": limit, "batches": batches, "stopped_after": stop, "dtypes": {}}
    for dtype, layers in ((torch.bfloat16, None), (torch.float32, 4)):
        name = str(dtype).replace("torch.", "")
        layers = None if smoke else layers
        model = build_cxr_llava(Path(tempfile.mkdtemp()), device, dtype, tiny=smoke, layers=layers)
        requests = requests_for(model, n)
        result = {"layers": layers or "all", "variants": {}}
        tokens: dict = {}
        for variant, shapes in variants.items():
            runs, seconds = {}, {}
            for batch in batches:
                if variant == "fixed" and batch == 1:
                    runs[1] = tokens[("default", 1)]  # one slot: the same computation as the default's
                    continue
                with Clock(device) as c:
                    done = stream(model, requests, slots=batch, max_new_tokens=limit, cuda_graphs=graphs,
                                  shapes=shapes)
                runs[batch], seconds[batch] = {k: r.token_ids for k, r in done.items()}, c.seconds
                tokens[(variant, batch)] = runs[batch]
            with Clock(device) as c:
                first = stream(model, requests, slots=big, max_new_tokens=limit, cuda_graphs=graphs, shapes=shapes,
                               stop_after=stop)
                rest = stream(model, [r for r in requests if r.key not in first], slots=big, max_new_tokens=limit,
                              cuda_graphs=graphs, shapes=shapes)
            resumed = {k: r.token_ids for k, r in {**first, **rest}.items()}
            result["variants"][variant] = {
                **{f"batch_{b}_vs_batch_1": compare(runs[b], runs[1]) for b in batches[1:]},
                f"resumed_vs_batch_{big}": compare(resumed, runs[big]),
                "vs_default_batch_1": {b: compare(runs[b], tokens[("default", 1)]) for b in batches},
                "seconds": seconds, "resume_seconds": c.seconds}
            log(f"invariance {name} {variant} {result['variants'][variant]}")
        out["dtypes"][name] = result
        del model
        reset_peak(device)
    return out


def section_kernels(args, device) -> dict:
    """Where a study's numbers pick up the batch, kernel by kernel at the decode step's real shapes: for a
    matrix product, the attention over the cache and the RMS norm, is row 0's output bit for bit the same when
    computed twice (determinism), when the other rows hold other data, when it sits in another row, at batch 1
    instead of 32, and (attention) when its masked cache positions hold other values? Then the same questions end
    to end: a fixed-shape run twice, with stale values in its cache, and with CUDA graphs off."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from cxrgen.models.cxr_llava import decoding
    from cxrgen.models.cxr_llava.decoding import Shapes
    from cxrgen.models.cxr_llava.llama import RMSNorm
    from realsize import build_cxr_llava

    smoke = args.cpu_smoke
    b, hidden, heads, hd, capacity = (4, 64, 4, 16, 200) if smoke else (32, 4096, 32, 128, 1667)
    gen = torch.Generator(device=device).manual_seed(0)
    out: dict = {"gemm": {}, "attention": {}, "norm": {}}

    def checks(f, x, rest):
        """f(x) with x [b, ...]: row 0 alone, twice, with other rows, moved to row b-1, at batch 1."""
        y = f(x)
        other = torch.cat([x[:1], rest(x[1:])])
        moved = torch.cat([rest(x[1:]), x[:1]])
        return {"twice": torch.equal(f(x)[0], y[0]), "other_rows": torch.equal(f(other)[0], y[0]),
                "moved": torch.equal(f(moved)[-1], y[0]), "batch_1": torch.equal(f(x[:1])[0], y[0])}

    def randn(*shape, dtype):
        return torch.randn(*shape, device=device, generator=gen, dtype=torch.float32).to(dtype)

    for dtype in (torch.bfloat16, torch.float32):
        name = str(dtype).replace("torch.", "")
        for label, n_out in (("q_proj", hidden), ("up_proj", hidden * 11008 // 4096), ("lm_head", 8 * hidden)):
            w = randn(n_out, hidden, dtype=dtype)
            x = randn(b, hidden, dtype=dtype)
            out["gemm"][f"{name} {label} [{b}x{hidden}]x[{hidden}x{n_out}]"] = checks(
                lambda t: F.linear(t, w), x, lambda t: randn(*t.shape, dtype=dtype))
            if dtype == torch.bfloat16 and device.type == "cuda":
                flag = torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction
                torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
                out["gemm"][f"{name} {label}, no reduced-precision reduction"] = checks(
                    lambda t: F.linear(t, w), x, lambda t: randn(*t.shape, dtype=dtype))
                torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = flag
        norm = RMSNorm(hidden, 1e-5).to(device, dtype)
        out["norm"][name] = checks(norm, randn(b, 1, hidden, dtype=dtype), lambda t: randn(*t.shape, dtype=dtype))
        q = randn(b, heads, 1, hd, dtype=dtype)
        k, v = randn(b, heads, capacity, hd, dtype=dtype), randn(b, heads, capacity, hd, dtype=dtype)
        positions = capacity * 2 // 3 + torch.randint(0, 32, (b,), device=device, generator=gen)
        mask = torch.zeros(b, 1, 1, capacity, dtype=dtype, device=device)
        mask.masked_fill_(torch.arange(capacity, device=device)[None, None, None] > positions[:, None, None, None],
                          float("-inf"))
        qkv = torch.cat([q.flatten(1), k.flatten(1), v.flatten(1), mask.flatten(1)], 1)
        sizes = [q[0].numel(), k[0].numel(), v[0].numel(), mask[0].numel()]

        def attend(packed, backend=None):
            a, kk, vv, m = (t.contiguous() for t in torch.split(packed, sizes, 1))
            n = packed.shape[0]
            args_ = (a.view(n, heads, 1, hd), kk.view(n, heads, capacity, hd), vv.view(n, heads, capacity, hd))
            if backend is None:
                return F.scaled_dot_product_attention(*args_, attn_mask=m.view(n, 1, 1, capacity))
            with sdpa_kernel([backend]):
                return F.scaled_dot_product_attention(*args_, attn_mask=m.view(n, 1, 1, capacity))

        backends = {"default": None, "math": SDPBackend.MATH}
        if device.type == "cuda":
            backends.update(efficient=SDPBackend.EFFICIENT_ATTENTION, cudnn=SDPBackend.CUDNN_ATTENTION)
        reference = attend(qkv)
        for label, backend in backends.items():
            try:
                result = checks(lambda t: attend(t, backend), qkv,
                                lambda t: torch.cat([randn(t.shape[0], sum(sizes[:3]), dtype=dtype),
                                                     t[:, sum(sizes[:3]):]], 1))
                stale = qkv.clone()
                kk = stale[:, sizes[0]:sizes[0] + sizes[1]].view(b, heads, capacity, hd)
                kk[0, :, int(positions[0]) + 1:] = randn(heads, capacity - int(positions[0]) - 1, hd, dtype=dtype)
                result["stale_masked_keys"] = torch.equal(attend(stale, backend)[0], attend(qkv, backend)[0])
                result["equals_default"] = torch.equal(attend(qkv, backend), reference)
            except RuntimeError as e:
                result = {"unavailable": str(e).splitlines()[0][:200]}
            out["attention"][f"{name} {label}"] = result
        log(f"kernels {name}: {json.dumps(out)}")

    # end to end: a fixed-shape run at 32 slots, twice; with random values in the cache before it starts; eager
    layers = None if smoke else 8
    model = build_cxr_llava(Path(tempfile.mkdtemp()), device, torch.bfloat16, tiny=smoke, layers=layers)
    n, slots, limit = (12, 4, 16) if smoke else (64, 32, 32)
    requests = requests_for(model, n)
    graphs = "on" if device.type == "cuda" else "off"
    fixed = Shapes(fixed=True)

    def run(todo=requests, **kwargs):
        return {k: r.token_ids for k, r in stream(model, todo, slots=slots, max_new_tokens=limit,
                                                  shapes=fixed, **{"cuda_graphs": graphs, **kwargs}).items()}

    first = run()
    e2e = {"layers": layers or "all", "twice": compare(run(), first)}
    part = run(stop_after=slots // 2)
    e2e["resumed"] = compare({**part, **run([r for r in requests if r.key not in part])}, first)
    e2e["batch_1"] = compare({k: r.token_ids for k, r in stream(model, requests, slots=1, max_new_tokens=limit,
                                                                shapes=fixed, cuda_graphs=graphs).items()}, first)
    default = {k: r.token_ids for k, r in stream(model, requests, slots=slots, max_new_tokens=limit,
                                                 cuda_graphs=graphs).items()}
    e2e["default_shapes_twice"] = compare({k: r.token_ids for k, r in stream(
        model, requests, slots=slots, max_new_tokens=limit, cuda_graphs=graphs).items()}, default)
    original = decoding.SlotDecoder.__init__

    def noisy(self, *a, **kw):
        original(self, *a, **kw)
        for cache in self.cache_k + self.cache_v:
            cache.normal_(generator=gen)

    decoding.SlotDecoder.__init__ = noisy
    try:
        e2e["stale_cache"] = compare(run(), first)
    finally:
        decoding.SlotDecoder.__init__ = original
    e2e["graphs_off"] = compare(run(cuda_graphs="off"), first)
    out["end_to_end_fixed_bf16"] = e2e
    log(f"kernels end to end: {e2e}")
    return out


def section_quant(args, device) -> dict:
    import torch

    from cxrgen.models import ModelError
    from cxrgen.models.quantization import quantize_linear_layers
    from realsize import build_cxr_llava

    if device.type != "cuda":
        return {"skipped": "bitsandbytes 4/8-bit needs a CUDA GPU"}
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        return {"skipped": f"bitsandbytes is not installed ({e})"}
    n, batch, limit = 16, 8, 48
    out = {"studies": n, "batch": batch, "max_new_tokens": limit, "modes": {}}
    reference = None
    for mode in ("bf16", "8bit", "4bit"):
        reset_peak(device)
        with Clock(device) as c:
            model = build_cxr_llava(Path(tempfile.mkdtemp()), device, torch.bfloat16)
            if mode != "bf16":
                quantize_linear_layers(model.language_model, mode, skip=("lm_head",), device=device)
        torch.cuda.empty_cache()
        weights = torch.cuda.memory_allocated(device) / 1e9
        requests = requests_for(model, n)
        stream(model, requests[:batch], slots=batch, max_new_tokens=4, cuda_graphs="off")  # warm-up
        reset_peak(device)
        with Clock(device) as t:
            done = stream(model, requests, slots=batch, max_new_tokens=limit, cuda_graphs="off")
        ids = {k: r.token_ids for k, r in done.items()}
        row = {"build_s": c.seconds, "weights_gb": weights, "peak_gb": peak_gb(device), "seconds": t.seconds,
               "reports_per_s": n / t.seconds, "tokens_per_s": sum(map(len, ids.values())) / t.seconds}
        if reference is None:
            reference = ids
        else:
            row["vs_bf16"] = compare(ids, reference)
            row["token_agreement"] = statistics.mean(
                sum(a == b for a, b in zip(ids[k], reference[k])) / max(len(reference[k]), 1) for k in reference)
        if mode == "4bit":  # last, as a failed capture can leave the device unusable for this process
            try:  # can the 4-bit step be captured, and does the graph write the eager tokens?
                graphed = stream(model, requests[:batch], slots=batch, max_new_tokens=16, cuda_graphs="on")
                eager = stream(model, requests[:batch], slots=batch, max_new_tokens=16, cuda_graphs="off")
                row["cuda_graph"] = {"captured": True, "of": len(eager),
                                     "same_tokens": sum(graphed[k].token_ids == eager[k].token_ids for k in eager)}
            except ModelError as e:
                row["cuda_graph"] = {"captured": False, "why": str(e)[:300]}
        elif mode == "8bit":
            row["cuda_graph"] = {"captured": False, "why": "not tried: LLM.int8 finds outliers on the host"}
        out["modes"][mode] = row
        log(f"quant {mode} {row}")
        del model
    return out


def section_transformers(args, device) -> dict:
    import torch

    from cxrgen.config import GenerationConfig, PromptConfig
    from cxrgen.models import Item
    from cxrgen.models.transformers import TransformersBackend
    from realsize import build_medgemma

    smoke = args.cpu_smoke
    n, batch, limit = (6, 3, 8) if smoke else (32, 16, 64)
    modes = ["bf16", "4bit"] if device.type == "cuda" else ["bf16"]
    out = {"studies": n, "batch": batch, "max_new_tokens": limit, "modes": {}}
    for mode in modes:
        folder = Path(tempfile.mkdtemp())
        reset_peak(device)
        with Clock(device) as c:
            model, processor = build_medgemma(folder, device, torch.bfloat16, tiny=smoke)
            if mode == "4bit":
                from cxrgen.models.quantization import quantize_linear_layers

                quantize_linear_layers(model.model.language_model, "4bit", skip=(), device=device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        backend = TransformersBackend(model, processor, source="random weights", folder=folder, revision=None,
                                      eos_token_ids=model.generation_config.eos_token_id)
        prepare = backend.image_preparer()
        from PIL import Image

        rng = torch.Generator().manual_seed(0)
        images = [Image.fromarray(torch.randint(0, 256, (512, 512), generator=rng, dtype=torch.uint8).numpy())
                  for _ in range(n)]
        items = [Item(i, prepare(im), 0) for i, im in enumerate(images)]
        prompt = PromptConfig(system="You are an expert radiologist.", user="Describe this X-ray")
        generation = GenerationConfig(batch_size=batch, max_new_tokens=limit)
        list(backend.stream(items[:batch], prompt, GenerationConfig(batch_size=batch, max_new_tokens=4)))
        reset_peak(device)
        with Clock(device) as t:
            done = [r for finished in backend.stream(items, prompt, generation) for _, r in finished]
        tokens = sum(r.n_new_tokens for r in done)
        row = {"build_s": c.seconds, "parameters_b": sum(p.numel() for p in model.parameters()) / 1e9,
               "seconds": t.seconds, "reports_per_s": n / t.seconds, "tokens_per_s": tokens / t.seconds,
               "mean_tokens": tokens / n, "peak_gb": peak_gb(device)}
        out["modes"][mode] = row
        log(f"transformers {mode} {row}")
        del model, backend
    if device.type != "cuda":
        out["modes"]["4bit"] = {"skipped": "bitsandbytes 4-bit needs a CUDA GPU"}
    return out


def section_finetune(args, device) -> dict:
    import shutil
    from types import SimpleNamespace

    import torch

    import bench_finetune
    from realsize import write_cxr_llava_checkpoint

    smoke = args.cpu_smoke
    steps, studies = (2, 8) if smoke else (10, 64)
    configs = [(1, "none"), (2, "none")] if smoke else [(1, "none"), (4, "none"), (4, "4bit")]
    tests = run_tests(args, "tests/test_cuda_finetune.py")  # first: the GPU to themselves
    folder = Path(tempfile.mkdtemp(prefix="cxrgen-finetune-"))
    try:
        with Clock(device) as c:
            checkpoint = write_cxr_llava_checkpoint(folder / "checkpoint", device, torch.bfloat16, tiny=smoke)
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the training processes need the GPU to themselves
        out = {"tests": tests, "steps": steps, "studies": studies, "dtype": "bfloat16",
               "gradient_checkpointing": True, "checkpoint_write_s": c.seconds,
               "checkpoint_gb": sum(f.stat().st_size for f in checkpoint.glob("*.safetensors")) / 1e9, "runs": []}
        log(f"finetune: checkpoint of {out['checkpoint_gb']:.1f} GB written in {c.seconds:.0f} s")
        manifest = bench_finetune.dataset(folder, studies)
        options = SimpleNamespace(device=device.type, dtype="bfloat16", workers=0 if smoke else "auto", steps=steps,
                                  prompt_user=None, gradient_checkpointing=True)
        for batch, quantization in configs:
            try:
                row = bench_finetune.run(options, folder, str(checkpoint), manifest, batch, quantization)
            except SystemExit as e:  # bench_finetune's way of naming a failed run: this configuration's result
                row = {"config": f"b{batch}-{quantization}", "error": str(e)[-1500:]}
            out["runs"].append(row)
            log(f"finetune {row}")
        if device.type != "cuda":
            out["runs"].append({"config": "b4-4bit", "skipped": "bitsandbytes 4-bit needs a CUDA GPU"})
        out["failures"] = tests.get("failures", []) + [f"fine-tuning {r['config']} failed"
                                                       for r in out["runs"] if "error" in r]
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def section_retrieval(args, device) -> dict:
    import bench_retrieval

    smoke = args.cpu_smoke
    tests = run_tests(args, "tests/test_cuda_retrieval.py")
    kind, studies = ("tiny", 32) if smoke else ("rad-dino", 1024)
    builds = [bench_retrieval.build(kind, studies, 64, "0" if smoke else "auto", device=str(device), dtype=dtype)
              for dtype in ("bfloat16", "float32")]
    for row in builds:
        log(f"retrieval build {row}")
    rows = 2_000 if smoke else 370_000
    search = bench_retrieval.search(rows, 768, 64, (1, 5), repeats=3 if smoke else 20, device=str(device))
    return {"encoder": "tiny DINOv2" if smoke else "RAD-DINO-sized DINOv2 ViT-B/14, 518 px, random weights",
            "tests": tests, "builds": builds, "search": search, "failures": tests.get("failures", [])}


# -- the tables ------------------------------------------------------------------------------------------------------

def fmt(value, digits=2):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def pytest_lines(data: dict) -> list[str]:
    counts = data["counts"]
    lines = [f"**Tests marked cuda** (`{data['command']}`): {counts['passed']} passed, {counts['failed']} "
             f"failed, {counts['error']} errors, {counts['skipped']} skipped.", ""]
    lines += [f"- {t['test']}: {t['outcome']} {t['message']}" for t in data["tests"] if t["outcome"] != "passed"]
    return lines + [""]


def markdown(results: dict) -> str:
    lines = []
    env = results.get("env", {})
    if "error" not in env and env:
        lines += [f"Device: {env.get('device')} (capability {env.get('capability', '-')}, "
                  f"{fmt(env.get('memory_gb'), 0)} GB, driver {env.get('driver', '-')}); Python {env.get('python')}, "
                  f"torch {env.get('torch')} (CUDA {env.get('cuda')}), transformers {env.get('transformers')}, "
                  f"bitsandbytes {env.get('bitsandbytes')}. Measured ceilings: copy {fmt(env.get('copy_gb_per_s'), 0)}"
                  f" GB/s (read + write), {env.get('matmul_dtype')} matrix product "
                  f"{fmt(env.get('matmul_tflop_per_s'), 0)} TFLOP/s.", ""]
    for name, _ in SECTIONS:
        data = results.get(name)
        if data is None:
            continue
        if "error" in data or "skipped" in data:
            lines += [f"**{name}**: {data.get('error') or data.get('skipped')}", ""]
            continue
        if "tests" in data and name != "pytest":
            lines += pytest_lines(data["tests"])
        if name == "pytest":
            lines += pytest_lines(data)
        elif name == "throughput":
            lines += ["**CXR-LLaVA-v2 at real size, bf16** (random weights, IU X-ray report lengths: mean "
                      f"{fmt(data['lengths']['mean'], 0)}, median {data['lengths']['median']}, max "
                      f"{data['lengths']['max']} tokens; limit 512). Target: >= {TARGET_REPORTS_PER_S:.0f} reports/s "
                      "at batch 32-64.", "",
                      "| batch | studies | batching | CUDA graphs | shapes | seconds | reports/s | tokens/s | decode "
                      "steps | live rows | graphs (capture s) | peak GB | same tokens as first row of its size |",
                      "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in data["runs"]:
                lines.append(f"| {r['batch']} | {r['studies']} | {r['batching']} | {r['cuda_graphs']} | "
                             f"{r['shapes']} | {fmt(r['seconds'])} | {fmt(r['reports_per_s'])} | "
                             f"{fmt(r['tokens_per_s'], 0)} | {r['decode_steps']} | {100 * r['live_rows']:.0f}% | "
                             f"{r['graphs_captured']} ({fmt(r['capture_s'])}) | {fmt(r['peak_gb'], 1)} | "
                             f"{fmt(r['same_tokens_as_first_config'])} |")
            lines += ["", "| prefill: studies per pass | prompt tokens | ms per study | prefill tokens/s |",
                      "|---|---|---|---|"]
            lines += [f"| {p['studies_per_pass']} | {p['prompt_tokens']} | {fmt(p['ms_per_study'], 1)} | "
                      f"{fmt(p['tokens_per_s'], 0)} |" for p in data["prefill"]]
            lines += ["", "| decode step: width | attended positions | ms | memory floor ms | floor / ms | "
                      "weights GB | keys+values GB | share of the step beyond the live length |",
                      "|---|---|---|---|---|---|---|---|"]
            for s in data["step"]:
                for kind in ("full", "live"):
                    r = s[kind]
                    lines.append(f"| {s['width']} | {s['capacity'] if kind == 'full' else s['live_length']} ({kind}) | "
                                 f"{fmt(r['ms'])} | {fmt(r['floor_ms'])} | {fmt(r['floor_share'])} | "
                                 f"{fmt(s['weights_gb'], 1)} | {fmt(r['kv_gb'], 1)} | "
                                 f"{fmt(s['attention_beyond_live_share']) if kind == 'full' else ''} |")
            lines.append("")
        elif name == "invariance":
            lines += [f"**Batch invariance**: {data['studies']} studies, {data['max_new_tokens']} new tokens (every "
                      f"report runs to the limit), reports that differ in any token; resumed = stopped after "
                      f"{data['stopped_after']} reports at batch {data['batches'][-1]} and rerun on the rest.", "",
                      "| dtype | layers | shapes | " + " | ".join(f"batch {b} vs 1" for b in data["batches"][1:])
                      + f" | resumed vs batch {data['batches'][-1]} | seconds at batch 1 / "
                      f"{data['batches'][-1]} |", "|---|---|---|" + "---|" * (len(data["batches"]) + 1)]
            for dtype, d in data["dtypes"].items():
                for variant, v in d["variants"].items():
                    cells = [f"{v[f'batch_{b}_vs_batch_1']['differ']}/{v[f'batch_{b}_vs_batch_1']['of']}"
                             for b in data["batches"][1:]]
                    res = v[f"resumed_vs_batch_{data['batches'][-1]}"]
                    secs = {int(b): t for b, t in v["seconds"].items()}
                    lines.append(f"| {dtype} | {d['layers']} | {variant} | " + " | ".join(cells) +
                                 f" | {res['differ']}/{res['of']} | {fmt(secs.get(1))} / "
                                 f"{fmt(secs.get(data['batches'][-1]))} |")
            lines.append("")
        elif name == "kernels":
            checks = ("twice", "other_rows", "moved", "batch_1", "stale_masked_keys", "equals_default")
            lines += ["**Kernels at the decode step's shapes** (batch 32): is row 0's output bit for bit the same "
                      "computed twice, with other data in the other rows, moved to the last row, at batch 1, with "
                      "other values at its masked cache positions (attention), and as PyTorch's default choice of "
                      "kernel?", "",
                      "| op | " + " | ".join(checks) + " |", "|---|" + "---|" * len(checks)]
            for group in ("gemm", "norm", "attention"):
                for op, r in data[group].items():
                    cells = [r.get("unavailable", "")[:60]] if "unavailable" in r else \
                        [{True: "yes", False: "**no**", None: ""}[r.get(c)] for c in checks]
                    lines.append(f"| {group} {op} | " + " | ".join(cells) + " |")
            e2e = data["end_to_end_fixed_bf16"]
            lines += ["", f"End to end, fixed shapes, bf16, {e2e['layers']} layers: reports differing from the first "
                      "run: " + ", ".join(f"{k} {v['differ']}/{v['of']}" for k, v in e2e.items() if k != "layers"),
                      ""]
        elif name == "quant":
            lines += [f"**Quantization at real size**: batch {data['batch']}, {data['studies']} studies, "
                      f"{data['max_new_tokens']} tokens, CUDA graphs off.", "",
                      "| mode | weights GB | peak GB | reports/s | tokens/s | reports equal to bf16 | token agreement "
                      "| CUDA graph |", "|---|---|---|---|---|---|---|---|"]
            for mode, r in data["modes"].items():
                vs = r.get("vs_bf16")
                graph = r.get("cuda_graph")
                g = ("-" if graph is None else f"captured, {graph['same_tokens']}/{graph['of']} same as eager"
                     if graph["captured"] else graph["why"][:80])
                lines.append(f"| {mode} | {fmt(r['weights_gb'], 1)} | {fmt(r['peak_gb'], 1)} | "
                             f"{fmt(r['reports_per_s'])} | {fmt(r['tokens_per_s'], 0)} | "
                             f"{(str(vs['of'] - vs['differ']) + '/' + str(vs['of'])) if vs else '-'} | "
                             f"{fmt(r.get('token_agreement'), 3)} | {g} |")
            lines.append("")
        elif name == "finetune":
            import bench_finetune

            lines += [f"**Fine-tuning CXR-LLaVA-v2 at real size** (`finetune_cxr.py`, random weights, "
                      f"{data['dtype']}, gradient checkpointing, LoRA r = 16 on the seven Llama projections, "
                      f"{data['steps']} steps of {data['studies']} studies in turn, one validation and one checkpoint "
                      f"at the end; checkpoint {fmt(data['checkpoint_gb'], 1)} GB written in "
                      f"{fmt(data['checkpoint_write_s'], 0)} s).", "", bench_finetune.table(data["runs"]), ""]
        elif name == "retrieval":
            import bench_retrieval

            lines += [f"**Retrieval** ({data['encoder']}): index build through the pipeline (loader workers, "
                      "encoder, batch files), then the exact search alone.", "",
                      bench_retrieval.table(data["builds"] + data["search"]), ""]
        elif name == "transformers":
            lines += [f"**transformers backend, Gemma-3 at MedGemma-4B's size**: batch {data['batch']}, "
                      f"{data['studies']} studies, up to {data['max_new_tokens']} new tokens.", "",
                      "| mode | parameters (B) | reports/s | tokens/s | mean tokens | peak GB |", "|---|---|---|---|---|---|"]
            for mode, r in data["modes"].items():
                if "skipped" in r:
                    lines.append(f"| {mode} | {r['skipped']} | | | | |")
                    continue
                lines.append(f"| {mode} | {fmt(r['parameters_b'])} | {fmt(r['reports_per_s'])} | "
                             f"{fmt(r['tokens_per_s'], 0)} | {fmt(r['mean_tokens'], 0)} | {fmt(r['peak_gb'], 1)} |")
            lines.append("")
    return "\n".join(lines)


# -- orchestration ---------------------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run_section(name: str, args) -> int:
    """Child process: one section; its result (or its error) in OUT/<name>.json."""
    out = Path(args.out) / f"{name}.json"
    t0 = time.time()
    try:
        import torch

        device = torch.device("cpu" if args.cpu_smoke else "cuda")
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"no CUDA device visible to torch {torch.__version__}")
        torch.set_grad_enabled(False)
        if args.cpu_smoke:
            from cxrgen.threads import configure_threads

            configure_threads(device)
        result = globals()[f"section_{name}"](args, device)
    except Exception as e:  # noqa: BLE001 - the section's error is its result
        result = {"error": f"{type(e).__name__}: {str(e)[:500]}", "traceback": traceback.format_exc()[-3000:]}
    result["section_seconds"] = time.time() - t0
    out.write_text(json.dumps(result, indent=2, default=str))
    return 0 if "error" not in result else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for the JSON and markdown results")
    p.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU (the test suite runs this)")
    p.add_argument("--budget", type=float, default=450, help="seconds for all sections together (default 450)")
    p.add_argument("--sections", default=",".join(DEFAULT_SECTIONS),
                   help=f"comma-separated, of {', '.join(n for n, _ in SECTIONS)}, or all (default: "
                        f"{','.join(DEFAULT_SECTIONS)})")
    p.add_argument("--section", help=argparse.SUPPRESS)  # internal: run one section in this process
    args = p.parse_args()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.section:
        return run_section(args.section, args)
    start = time.time()
    names = [n for n, _ in SECTIONS]
    wanted = names if args.sections == "all" else [n.strip() for n in args.sections.split(",")]
    unknown = [n for n in wanted if n not in names]
    if unknown:
        p.error(f"--sections: no section {', '.join(unknown)} (there are {', '.join(names)}, or all)")
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "cpu_smoke": args.cpu_smoke,
                     "commit": _commit()}
    failed = False
    for name, limit in SECTIONS:
        if name not in wanted:
            continue
        left = args.budget - (time.time() - start)
        if left < 20:
            results[name] = {"skipped": f"the {args.budget:.0f} s budget was spent before it"}
            continue
        timeout = min(limit * (3 if args.cpu_smoke else 1), left)
        log(f"== {name} (up to {timeout:.0f} s)")
        cmd = [sys.executable, str(Path(__file__).resolve()), "--out", args.out, "--section", name]
        if args.cpu_smoke:
            cmd.append("--cpu-smoke")
        try:
            subprocess.run(cmd, cwd=ROOT, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            result = json.loads((Path(args.out) / f"{name}.json").read_text())
        except subprocess.TimeoutExpired:
            result = {"error": f"stopped at its {timeout:.0f} s limit"}
        except (OSError, ValueError) as e:
            result = {"error": f"no result ({type(e).__name__}: {e})"}
        failed |= "error" in result or bool(result.get("failures"))
        results[name] = result
        log(f"== {name}: {'error: ' + result['error'] if 'error' in result else 'done'} "
            f"in {result.get('section_seconds', time.time() - start):.0f} s")
        Path(args.out, "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    results["seconds"] = time.time() - start
    Path(args.out, "gpu_check.json").write_text(json.dumps(results, indent=2, default=str))
    table = markdown(results)
    Path(args.out, "gpu_check.md").write_text(table + "\n")
    print(table)
    print(f"gpu check: {'some sections failed' if failed else 'every section ran'} in {results['seconds']:.0f} s; "
          f"results in {args.out}/gpu_check.json and gpu_check.md")
    return 1 if failed else 0


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
