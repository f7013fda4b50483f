"""Tiny random checkpoints of every kind this project runs, to rehearse any backend offline in seconds:

    python -m cxrgen.models.tiny OUT_DIR

writes one folder per kind into OUT_DIR (each built into a temporary folder and renamed into place, so a kill
leaves no half checkpoint; folders already there are left as they are):

    cxr-llava   CXR-LLaVA-v2's published layout          model.backend: cxr_llava
    gemma3      Gemma-3 + SigLIP (MedGemma's architecture) model.backend: transformers
    llava       LLaVA-HF (CLIP + Llama)                    model.backend: transformers
    blip        a BLIP captioner (generate-cxr's layout)   model.backend: transformers
    dinov2      a DINOv2 encoder (RAD-DINO's architecture) model.backend: retrieval

The weights are random: the reports are noise, and the runs show the mechanics, not the models.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

from .cxr_llava.tiny import build_tiny_checkpoint, ensure_tiny_checkpoint
from .retrieval.tiny import build_tiny_dinov2
from .transformers.tiny import build_tiny_blip, build_tiny_gemma3, build_tiny_llava

#: folder name -> (builder, the model.backend that runs it, what it is)
KINDS: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "cxr-llava": (build_tiny_checkpoint, "cxr_llava", "CXR-LLaVA-v2's published layout"),
    "gemma3": (build_tiny_gemma3, "transformers", "Gemma-3 + SigLIP, MedGemma's architecture"),
    "llava": (build_tiny_llava, "transformers", "LLaVA-HF: CLIP + Llama"),
    "blip": (build_tiny_blip, "transformers", "a BLIP captioner, generate-cxr's layout"),
    "dinov2": (build_tiny_dinov2, "retrieval", "a DINOv2 image encoder, RAD-DINO's architecture"),
}


def build_all(out_dir: str | Path) -> dict[str, tuple[Path, bool]]:
    """Build every kind into ``out_dir``; returns name -> (folder, whether it was built now)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    done = {}
    for name, (build, _, _) in KINDS.items():
        folder = out / name
        done[name] = (folder, not folder.is_dir())
        ensure_tiny_checkpoint(folder, build)
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cxrgen.models.tiny", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to write the checkpoints into (created)")
    args = parser.parse_args(argv)
    for name, (folder, built) in build_all(args.out_dir).items():
        _, backend, what = KINDS[name]
        print(f"{folder}: {what} (model.backend: {backend}){'' if built else ', already there'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
