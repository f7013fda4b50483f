#!/usr/bin/env python
"""Generate chest X-ray reports for a dataset with a report generator (CXR-LLaVA-v2 by default, or any
transformers image-text-to-text model); write reports.csv, metrics.json, run.json and report.html.

  python generate_cxr.py --config configs/demo.yaml            # CPU demo, tiny random model
  python generate_cxr.py --config config.yaml --shard 0/4      # one of four shards (Slurm sets it itself)
  python generate_cxr.py --merge runs/cxr-llava-v2_iu-xray_test  # merge finished shards
  python generate_cxr.py --merge RUN_DIR --set evaluation.bootstrap=200   # evaluate a finished run again
  python generate_cxr.py --download-model                      # once, on a machine with internet
  python generate_cxr.py --make-split --set data.root=/data/iu # IU X-ray Kaggle download: write its split files
  python generate_cxr.py --config configs/rad-dino-retrieval.yaml --build-index   # retrieval: build its index

Exit codes: 0 all studies ok; 3 finished, some studies are error rows; 2 bad configuration or input, or another
process is working on the same shard or merge (the line names it); 4 the shard could not commit every row (the
message says why); 75 stopped by SIGTERM/SIGUSR1 after saving its work, 130 stopped by Ctrl-C after saving its work
(run the same command to resume); 1 a crash (traceback).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys

from cxrgen import runner
from cxrgen.config import ConfigError, load_config
from cxrgen.datasets import DatasetError, MissingSplitError
from cxrgen.evaluation import EvaluationInputError
from cxrgen.finishing import finish
from cxrgen.models import ModelError, NotInCacheError
from cxrgen.runstore import RunStore


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML configuration (default: config.yaml; with --merge: the run's own settings)")
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
    p.add_argument("--merge", metavar="RUN_DIR",
                   help="merge the finished shards of RUN_DIR, evaluate and write its results (again), then exit; "
                        "--set evaluation.* and output.html change how, other settings must be the run's")
    p.add_argument("--download-model", action="store_true",
                   help="download the configured checkpoint into the Hugging Face cache and exit")
    p.add_argument("--make-split", action="store_true",
                   help="write the benchmark's indiana_{train,val,test}.csv into data.root (data.format "
                        "iu_xray_kaggle, made from indiana_reports.csv) and exit")
    p.add_argument("--force", action="store_true", help="with --make-split: replace split files that differ")
    p.add_argument("--build-index", action="store_true",
                   help="model.backend retrieval: build the index of retrieval.split (or finish a killed build) and "
                        "exit; a run builds it itself when it is missing")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.merge:
            return merge(args)
        cfg = load_config(args.config or "config.yaml", args.overrides, **{
            "model.device": args.device, "generation.batch_size": args.batch_size,
            "output.dir": args.output_dir, "output.run_name": args.run_name,
        })
        if args.limit is not None and args.limit < 1:
            raise ConfigError(f"--limit must be a positive integer; got {args.limit}")
        if args.download_model:
            from cxrgen import models
            folder, commit = models.download(cfg)
            print(f"{cfg.model.name_or_path} at {commit or 'local folder'}: {folder}")
            return runner.EXIT_OK
        if args.force and not args.make_split:
            raise ConfigError("--force only goes with --make-split")
        if args.make_split:
            return make_split(cfg, force=args.force)
        if args.build_index:
            return build_index(cfg)
        shard = runner.parse_shard(args.shard)
        return runner.generate(cfg, shard=shard, resume=args.resume, limit=args.limit, progress=not args.quiet)
    except KeyboardInterrupt:
        print("\nstopped by a second Ctrl-C: rows in flight were lost, committed rows are kept; "
              "run the same command to resume", file=sys.stderr)
        return runner.EXIT_SIGINT
    except runner.IncompleteShardError as e:
        print(f"error: {e}", file=sys.stderr)
        return runner.EXIT_INCOMPLETE
    except (ConfigError, runner.RunError, DatasetError, ModelError, EvaluationInputError) as e:
        hint = (" (--no-resume)" if isinstance(e, runner.SettingsChangedError)
                else fetch_hint(e, args.config) or split_hint(e))
        print(f"error: {e}{hint}", file=sys.stderr)  # each names its file, key or setting
        return runner.EXIT_USAGE


def merge(args: argparse.Namespace) -> int:
    """--merge RUN_DIR: finish the run with its own settings, or those of --config, with --set laid over them."""
    store = RunStore(args.merge)
    cfg = load_config(args.config, args.overrides, base=None if args.config else store.saved_config())
    return finish(store, cfg)


def make_split(cfg, force: bool) -> int:
    """--make-split: write the IU X-ray split files into data.root and print what was done."""
    from cxrgen.datasets.splits import SPLITS, SplitFilesDifferError
    from cxrgen.datasets.splits import make_split as write_split

    if cfg.data.format != "iu_xray_kaggle":
        raise ConfigError(f"--make-split needs data.format iu_xray_kaggle; data.format is {cfg.data.format}")
    try:
        result = write_split(cfg.data.root, force=force)
    except SplitFilesDifferError as e:
        raise DatasetError(f"{e} (--force replaces them)") from None
    c = result.counts
    print(f"{result.reports}: {c['reports']} reports, {c['incomplete']} left out for a missing value; "
          f"{c['kept']} split into train {c['train']}, val {c['val']}, test {c['test']}")
    said = {"written": "written", "replaced": "replaced", "unchanged": "already there with these rows, left as is"}
    for name in SPLITS:
        print(f"  {result.files[name]}: {c[name]} studies, {said[result.status[name]]}")
    return runner.EXIT_OK


def build_index(cfg) -> int:
    """--build-index: build or finish the retrieval index; SIGTERM/SIGUSR1/Ctrl-C stop it after the batch in flight
    is committed (exit 75 or 130, as a run)."""
    from cxrgen.models.retrieval import BuildInterrupted
    from cxrgen.models.retrieval import build_index as build

    if cfg.model.backend != "retrieval":
        raise ConfigError(f"--build-index needs model.backend: retrieval; model.backend is {cfg.model.backend}")
    with runner.StopFlag() as stop:
        try:
            index = build(cfg, stop=lambda: stop.signal is not None)
        except BuildInterrupted as e:
            print(f"stopped: {e}", file=sys.stderr)
            return stop.exit_code
    counts = ", ".join(f"{k} {v}" for k, v in index.info["counts"].items() if v)
    print(f"{index.folder}: {index.info['count']} studies indexed ({counts})")
    return runner.EXIT_OK


def fetch_hint(error: Exception, config: str | None = None) -> str:
    """The command that fetches a model or adapter missing from the Hugging Face cache, for the error line; with the
    user's ``--config``, so that the fetched model is the one that config runs."""
    if not isinstance(error, NotInCacheError):
        return ""
    if error.setting == "model.adapter":
        return f": huggingface-cli download {shlex.quote(error.repo_id)}"
    revision = f" --set model.revision={shlex.quote(error.revision)}" if error.revision else ""
    given = f" --config {shlex.quote(config)}" if config else ""
    return (f": python generate_cxr.py{given} --download-model --set "
            f"model.name_or_path={shlex.quote(error.repo_id)}{revision}")


def split_hint(error: Exception) -> str:
    """How to make a missing IU X-ray split file, for the error line; '' for other errors."""
    if isinstance(error, MissingSplitError) and error.reports is not None:
        return ("; or make the benchmark's split files: "
                f"python generate_cxr.py --make-split --set data.root={shlex.quote(str(error.root))}")
    return ""


if __name__ == "__main__":
    sys.exit(main())
