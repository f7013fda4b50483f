"""Report lengths for the batching benchmarks: token counts of the IU X-ray reference reports.

Each Open-i report XML gives its FINDINGS and IMPRESSION text; a report's length is the number of tokens its
"Findings: ... Impression: ..." text takes under a sentencepiece tokenizer (``tokenizer.model``: the checkpoint's,
or the real Llama-2 one when at hand), plus one for ``</s>``. Benchmarks draw per-study lengths from these counts
(seeded, with replacement) and make each study stop exactly there: a never-</s> checkpoint with the study's own
token limit (``Request.max_new_tokens``), which costs the device the same steps as a ``</s>`` at that step.
"""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPORTS = ROOT / "tests" / "data" / "iu_reports"


def report_texts(folder: Path = DEFAULT_REPORTS) -> list[str]:
    texts = []
    for xml in sorted(Path(folder).glob("*.xml")):
        parts = {node.get("Label"): (node.text or "").strip() for node in ET.parse(xml).iter("AbstractText")}
        findings, impression = parts.get("FINDINGS", ""), parts.get("IMPRESSION", "")
        if findings or impression:
            texts.append(f"Findings: {findings} Impression: {impression}".strip())
    if not texts:
        raise SystemExit(f"{folder}: no Open-i report XML with FINDINGS or IMPRESSION text")
    return texts


def token_counts(tokenizer_model: Path, folder: Path = DEFAULT_REPORTS) -> list[int]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(tokenizer_model))
    return [len(sp.encode(text)) + 1 for text in report_texts(folder)]


def draw(counts: list[int], n: int, limit: int, seed: int = 0) -> list[int]:
    """``n`` lengths drawn with replacement from ``counts``, each at most ``limit``."""
    rng = random.Random(seed)
    return [min(limit, rng.choice(counts)) for _ in range(n)]


def describe(lengths: list[int]) -> str:
    s = sorted(lengths)
    return (f"mean {sum(s) / len(s):.0f}, median {s[len(s) // 2]}, min {s[0]}, max {s[-1]} tokens "
            f"over {len(s)} studies")
