#!/usr/bin/env python
"""Fine-tune a report generator (CXR-LLaVA-v2, or any transformers image-text-to-text model) with LoRA on a
dataset's training split, validated on its validation split; the adapter it writes is what generate_cxr.py's
model.adapter reads. Settings: the same config files as generate_cxr.py, with their training: section.

  python finetune_cxr.py --config config.yaml --set data.root=/data/iu_xray
  torchrun --standalone --nproc_per_node 4 finetune_cxr.py --config config.yaml   # the 4 GPUs of one node
  sbatch slurm/finetune.sbatch --set data.root=/data/iu_xray                      # Slurm: all GPUs of a node
  python generate_cxr.py --set model.adapter=$(python finetune_cxr.py --config config.yaml | tail -n 1)

The last line on stdout is the adapter folder: <output.dir>/<training.run_name>/best (best validation loss), or
.../last without validation. Rerunning the same command resumes an interrupted run from its last checkpoint.

Exit codes: 0 trained (or trained already); 2 bad configuration or input, or another process training in the same
folder (one line naming the key, file or holder); 75 stopped by SIGTERM/SIGUSR1 after saving a checkpoint, 130 by
Ctrl-C (run the same command to resume); 1 a crash (traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from cxrgen.config import ConfigError, load_config
from cxrgen.datasets import DatasetError
from cxrgen.exits import EXIT_SIGINT, EXIT_USAGE
from cxrgen.models import ModelError
from cxrgen.runstore import RunError, SettingsChangedError
from cxrgen.training import finetune
from cxrgen.training.data import TrainingDataError
from generate_cxr import fetch_hint, split_hint


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="config.yaml", help="YAML configuration (default: config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any configuration key, e.g. --set training.learning_rate=1e-4 (repeatable)")
    p.add_argument("--output-dir", help="output.dir (the run folder is <output.dir>/<training.run_name>)")
    p.add_argument("--run-name", help="training.run_name")
    p.add_argument("--device", help="model.device: auto, cpu, cuda (under torchrun: each process its own GPU)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the run folder's last checkpoint (default); --no-resume starts over")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        cfg = load_config(args.config, args.overrides, **{"output.dir": args.output_dir,
                                                          "training.run_name": args.run_name,
                                                          "model.device": args.device})
        outcome = finetune(cfg, resume=args.resume, progress=not args.quiet)
    except KeyboardInterrupt:
        print("\nstopped by a second Ctrl-C: the last committed checkpoint is kept; run the same command to resume",
              file=sys.stderr)
        return EXIT_SIGINT
    except (ConfigError, DatasetError, ModelError, RunError, TrainingDataError) as e:
        hint = " (--no-resume)" if isinstance(e, SettingsChangedError) else fetch_hint(e) or split_hint(e)
        print(f"error: {e}{hint}", file=sys.stderr)
        return EXIT_USAGE
    if outcome.adapter is not None:
        print(outcome.adapter)
    return outcome.exit_code


if __name__ == "__main__":
    sys.exit(main())
