#!/usr/bin/env python
"""Generate chest X-ray reports with CXR-LLaVA-v2 for a dataset; write reports.csv, metrics.json, run.json.

  python generate_cxr.py --config configs/demo.yaml            # CPU demo, tiny random model
  python generate_cxr.py --config config.yaml --shard 0/4      # one of four shards (Slurm sets it itself)
  python generate_cxr.py --merge runs/cxr-llava-v2_iu-xray_test  # merge finished shards
  python generate_cxr.py --download-model                      # once, on a machine with internet

Exit codes: 0 all studies ok; 3 finished, some studies are error rows; 2 bad configuration or input;
75 stopped by SIGTERM/SIGUSR1 after saving its work (run the same command to resume); 1 a crash (traceback).
"""

from __future__ import annotations

import argparse
import logging
import sys

from cxrgen import runner
from cxrgen.config import ConfigError, load_config
from cxrgen.datasets import DatasetError
from cxrgen.evaluation import EvaluationInputError
from cxrgen.models.cxr_llava.configuration import CheckpointError


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="config.yaml", help="YAML configuration (default: config.yaml)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any configuration key, e.g. --set generation.batch_size=16 (repeatable)")
    p.add_argument("--limit", type=int, help="only the first N selected studies")
    p.add_argument("--device", help="model.device: auto, cpu, cuda, cuda:N")
    p.add_argument("--batch-size", type=int, help="generation.batch_size")
    p.add_argument("--output-dir", help="output.dir")
    p.add_argument("--run-name", help="output.run_name")
    p.add_argument("--shard", help="i/n: run shard i of n (default: from SLURM_ARRAY_TASK_ID/COUNT, else 0/1)")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="skip studies already done in this run directory (default); --no-resume starts over")
    p.add_argument("--merge", metavar="RUN_DIR", help="merge the finished shards of RUN_DIR and exit")
    p.add_argument("--download-model", action="store_true",
                   help="download the configured checkpoint into the Hugging Face cache and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.merge:
            return runner.merge(args.merge)
        cfg = load_config(args.config, args.overrides, **{
            "model.device": args.device, "generation.batch_size": args.batch_size,
            "output.dir": args.output_dir, "output.run_name": args.run_name,
        })
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit must be a positive integer; got {args.limit}")
        if args.download_model:
            from cxrgen.models.cxr_llava.checkpoint import resolve
            folder, commit = resolve(cfg.model.name_or_path, cfg.model.revision, allow_download=True)
            print(f"{cfg.model.name_or_path} at {commit or 'local folder'}: {folder}")
            return runner.EXIT_OK
        shard = runner.parse_shard(args.shard)
        return runner.generate(cfg, shard=shard, resume=args.resume, limit=args.limit, progress=not args.quiet)
    except (ConfigError, runner.RunError, DatasetError, CheckpointError, EvaluationInputError) as e:
        print(f"error: {e}", file=sys.stderr)  # each names its file, key or setting
        return runner.EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
