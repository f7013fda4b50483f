#!/usr/bin/env python
"""Time the published CXR-LLaVA-v2 code (one image per ``write_radiologic_report`` call) on a checkpoint.

The published code is not part of this project: point ``--code`` at a folder holding its ``CXR_LLAVA_HF``
package (github.com/ECOFRI/CXR_LLaVA, folder ``CXR_LLAVA_HF/``) and run this script with a Python that has the
transformers it was written for (4.36.2). The package is copied to a scratch folder first; with ``--dtype float32``
its hard-coded ``torch.bfloat16`` casts are changed to ``torch.float32`` in that copy. ``torch.Tensor.cuda`` is made
a no-op (the code calls ``.cuda()`` on its inputs), so it runs on the CPU. Greedy (temperature 0). Prints one JSON
line: times from process start, reports and their lengths in characters.

  PUBLISHED_PYTHON bench/run_published.py --code DIR --model CKPT --n 64 --dtype bfloat16
"""

from __future__ import annotations

import time

T0 = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--code", required=True, help="folder that contains the published CXR_LLAVA_HF package")
    p.add_argument("--model", required=True, help="checkpoint folder in the published layout")
    p.add_argument("--images", default=str(Path(__file__).resolve().parents[1] / "demo" / "images"))
    p.add_argument("--n", type=int, default=64)
    p.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    args = p.parse_args()
    import torch
    from PIL import Image

    scratch = Path(tempfile.mkdtemp(prefix="published-"))
    package = scratch / "CXR_LLAVA_HF"
    shutil.copytree(Path(args.code) / "CXR_LLAVA_HF", package)
    if args.dtype == "float32":
        for source in package.glob("*.py"):
            source.write_text(source.read_text().replace("torch.bfloat16", "torch.float32"))
    torch.Tensor.cuda = lambda self, *a, **k: self
    sys.path.insert(0, str(scratch))
    from CXR_LLAVA_HF.CXR_LLAVA_HF import CXRLLAVAModel

    t_import = time.time()
    model = CXRLLAVAModel.from_pretrained(args.model).eval()
    if args.dtype == "float32":
        model = model.float()
    t_load = time.time()
    images = sorted(Path(args.images).glob("*.png"))
    lengths = []
    for i in range(args.n):
        lengths.append(len(model.write_radiologic_report(Image.open(images[i % len(images)]), temperature=0)))
    t_end = time.time()
    shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps({"reports": args.n, "import_s": t_import - T0, "load_s": t_load - t_import,
                      "generate_s": t_end - t_load, "total_s": t_end - T0, "chars": lengths,
                      "threads": torch.get_num_threads(), "dtype": args.dtype}))


if __name__ == "__main__":
    main()
