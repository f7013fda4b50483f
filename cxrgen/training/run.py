"""A fine-tuning run, start to end: splits -> run folder -> model and LoRA -> transformers' Trainer -> adapters.

One process, or one per GPU under ``torchrun`` (DDP: each process loads the model onto its own GPU, the Trainer
splits every batch across them and averages the gradients; on the CPU the processes talk over gloo). Rank 0
holds the run folder's lock and writes everything but the other processes' RNG states.

Order of a start (each step can stop it with one line): the splits are selected (no model needed); the run
folder is locked and its settings checked (a run with a committed checkpoint resumes only with the same ones); a
run that has ended already just names its adapter; the model is loaded and LoRA put on it; the Trainer resumes
from the last committed checkpoint, or starts; at the end ``last/``, ``train.json`` and ``loss.svg`` are written.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError
from ..exits import EXIT_OK, StopFlag
from ..provenance import data_files, project_commit, versions
from ..runstore import TrainingStore, defining
from ..runstore.training import NOT_DEFINING, TRAINING_DEFINING
from .data import selection_digest, selections as select_splits
from ..threads import allotted_cpus, configure_threads

log = logging.getLogger("cxrgen")


@dataclass
class Outcome:
    """How a start ended: its exit code and, once training has ended, the adapter to use (best validation loss,
    or the last step without validation)."""

    exit_code: int
    adapter: Path | None = None


@dataclass(frozen=True)
class Processes:
    """This process's place under the launcher (torchrun's RANK, LOCAL_RANK, WORLD_SIZE; one process without)."""

    rank: int = 0
    local_rank: int = 0
    world: int = 1
    local_world: int = 1

    @classmethod
    def from_env(cls, env=os.environ) -> "Processes":
        return cls(int(env.get("RANK", 0)), int(env.get("LOCAL_RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                   int(env.get("LOCAL_WORLD_SIZE", env.get("WORLD_SIZE", 1))))


def finetune(cfg: Config, *, resume: bool = True, progress: bool = True) -> Outcome:
    """Train (or resume) the adapter ``cfg`` describes; see the module docstring."""
    with StopFlag("finishing this optimizer step, saving a checkpoint") as stop:
        return _finetune(cfg, resume, progress, stop, Processes.from_env())


def run_dir(cfg: Config) -> Path:
    return Path(cfg.output.dir) / cfg.training.run_name


def _model_cfg(cfg: Config, procs: Processes):
    """model.* for this process: under torchrun each process takes the GPU of its local rank."""
    from ..models.base import resolve_device

    if cfg.model.backend == "retrieval":
        raise ConfigError("model.backend retrieval: an image encoder and an index have nothing to fine-tune; "
                          "fine-tuning trains a report generator (cxr_llava or transformers)")
    if cfg.model.adapter:
        raise ConfigError(f"model.adapter must be null for fine-tuning (it is {cfg.model.adapter}): the adapter "
                          "trained is applied to the base model alone")
    device = cfg.model.device
    try:
        kind = resolve_device(device).type
    except ValueError as e:
        raise ConfigError(f"model.device {device}: {e}") from None
    if kind == "cuda" and procs.world > 1:
        device = f"cuda:{procs.local_rank}"
    elif kind == "cuda" and device not in ("auto", "cuda", "cuda:0"):
        raise ConfigError(f"model.device {device}: fine-tuning runs on the GPUs it is given (the first, or one per "
                          f"process under torchrun); choose with CUDA_VISIBLE_DEVICES={device[5:]} and cuda")
    return dataclasses.replace(cfg.model, device=device if device != "auto" else kind)


def _settings(cfg: Config, identity: dict, procs: Processes, selections: dict) -> dict[str, Any]:
    """What decides the adapter: the settings, the model's identity, the number of processes (the global batch),
    the studies selected."""
    settings = {k: v for k, v in defining(cfg, identity, TRAINING_DEFINING).items() if k not in NOT_DEFINING}
    settings["processes"] = procs.world
    for key, selection in selections.items():
        settings[f"studies.{key}"] = selection_digest(selection.studies)
    return settings


def _on_rank0(procs: Processes, action):
    """Run ``action`` on rank 0 and hand its exception, if any, to every process (so all stop with its line)."""
    import torch.distributed as dist

    error = None
    if procs.rank == 0:
        try:
            action()
        except Exception as e:  # re-raised below, on every process
            error = e
    if procs.world > 1:
        box = [error]
        dist.broadcast_object_list(box, src=0)
        error = box[0]
    if error is not None:
        raise error


def _finetune(cfg: Config, resume: bool, progress: bool, stop: StopFlag, procs: Processes) -> Outcome:
    from .. import models

    model_cfg = _model_cfg(cfg, procs)
    if model_cfg.quantization != "none":
        from ..models.quantization import check_quantization

        check_quantization(model_cfg)  # one line where bitsandbytes cannot run (the CPU)
    selections = select_splits(cfg)
    store = TrainingStore(run_dir(cfg))
    if procs.world > 1:
        from accelerate import PartialState

        PartialState(cpu=model_cfg.device == "cpu", backend="gloo" if model_cfg.device == "cpu" else "nccl")
    identity = models.identity(cfg.model)
    settings = _settings(cfg, identity, procs, selections)
    lock = store.lock() if procs.rank == 0 else None
    _on_rank0(procs, lock.acquire if lock else lambda: None)
    try:
        state: dict[str, Any] = {}

        def begin():
            state["run_id"] = store.begin(settings, {"model_identity": identity, "data_files": data_files(cfg.data),
                                                     "selection": {k: v.counts for k, v in selections.items()}},
                                          resume)
            state["finished"] = store.finished(state["run_id"])
            if not state["finished"]:
                store.prepare_resume()

        _on_rank0(procs, begin)
        if procs.world > 1:
            import torch.distributed as dist

            box = [state]
            dist.broadcast_object_list(box, src=0)
            state = box[0]
        if state["finished"]:
            adapter = Path(state["finished"]["adapter"])
            log.info("%s: trained already (%s); nothing to do", store.dir, state["finished"]["status"])
            return Outcome(EXIT_OK, adapter if procs.rank == 0 else None)
        return _train(cfg, model_cfg, store, selections, state["run_id"], identity, progress, stop, procs)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg, model_cfg, store, selections, rid, identity, progress, stop, procs) -> Outcome:
    import torch
    from transformers import set_seed

    from .. import models
    from .data import Examples, read_image_for, split_of
    from .engine import EarlyStopping, ReportTrainer, RunCallback, step_loss
    from .sequences import collate, sequences

    t = cfg.training
    latest = store.latest()
    backend = models.load(model_cfg)
    seqs = sequences(backend, cfg.prompt)
    train = split_of(selections["train_split"], t.train_split, seqs)
    val = split_of(selections["val_split"], t.val_split, seqs) if "val_split" in selections else None
    if procs.rank == 0:
        log.info("%s; %s", train.describe(), val.describe() if val else "no validation (training.val_split: null)")
    set_seed(t.seed)  # LoRA's initialisation
    peft_model = _lora(seqs, backend, cfg)
    dtype = _compute_dtype(backend)
    device = torch.device(model_cfg.device)
    threads = configure_threads(device)  # as generation: the allotted CPUs less one (OMP_NUM_THREADS wins)
    workers = _workers(cfg.loader.num_workers, procs, len(train.studies))
    global_batch = t.batch_size * t.gradient_accumulation * procs.world
    args = _arguments(t, val is not None, dtype, device, procs, workers, store)
    read = read_image_for(cfg, backend.image_preparer())
    config_json = _adapter_config(peft_model, cfg.model)

    def write_adapter(name: str, step: int, loss: float | None = None) -> Path:
        return store.write_adapter(name, config_json, _adapter_weights(peft_model, seqs, step, loss))

    run = RunCallback(stop, lambda folder, state, ended: store.commit(folder, {
        "step": state.global_step, "epoch": state.epoch, "max_steps": state.max_steps,
        "samples": state.global_step * global_batch, "ended": ended}), progress, args.device)
    callbacks = [EarlyStopping(t.early_stopping_patience)] if val and t.early_stopping_patience else []
    trainer = ReportTrainer(model=peft_model, args=args, train_dataset=Examples(train, read, seqs.example),
                            data_collator=functools.partial(collate, pad_id=seqs.pad_id),
                            compute_loss_func=step_loss, callbacks=callbacks + [run],
                            eval_dataset=Examples(val, read, seqs.example) if val else None, pad_id=seqs.pad_id,
                            on_best=lambda step, loss: write_adapter("best", step, loss))
    from transformers.trainer_callback import ProgressCallback

    trainer.remove_callback(ProgressCallback)  # RunCallback keeps the progress bar and logs validations
    before = _trainer_state(latest)
    if procs.rank == 0:
        store.note_start(before.global_step if before else 0, {
            "processes": procs.world, "device": str(device), "dtype": str(dtype).replace("torch.", ""),
            "threads": threads, "loader_workers": workers, "versions": _versions()})
        log.info("%s at step %d of run %s: %s on %s, %d trainable parameters, global batch %d",
                 "resuming" if latest else "starting", before.global_step if before else 0, rid,
                 backend.describe().get("source"), device, _trainable(peft_model), global_batch)
    started = time.perf_counter()
    try:
        if latest and latest[1].get("ended"):  # ended: only the outputs are missing
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            set_peft_model_state_dict(peft_model, load_file(str(latest[0] / "adapter_model.safetensors")))
            final = before
        else:
            trainer.train(resume_from_checkpoint=str(latest[0]) if latest else None)
            final = trainer.state
    except BaseException as e:
        if procs.rank == 0:
            store.note_end(outcome=f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
        raise
    seconds = time.perf_counter() - started
    tokens = final.num_input_tokens_seen - (before.num_input_tokens_seen if before else 0)
    memory = _peak_memory(device)
    if run.interrupted:
        if procs.rank == 0:
            store.note_end(outcome="interrupted", step_after=final.global_step, steps_run=run.steps_run,
                           seconds=round(seconds, 3), tokens=tokens, **memory)
            log.warning("stopped at step %d of %d after saving a checkpoint; run the same command to resume",
                        final.global_step, final.max_steps)
        return Outcome(stop.exit_code)
    if procs.rank != 0:
        return Outcome(EXIT_OK)
    store.note_end(outcome="ended", step_after=final.global_step, steps_run=run.steps_run, seconds=round(seconds, 3),
                   tokens=tokens, **memory)
    last = write_adapter("last", final.global_step)
    best = store.adapter_dir("best") if (store.adapter_dir("best") / "adapter_model.safetensors").is_file() else None
    adapter = best or last
    record = _record(cfg, store, rid, identity, backend, selections, train, val, final, global_batch,
                     _trainable(peft_model), adapter, last, best)
    from .record import loss_curve

    store.write_record(record, loss_curve(record["steps"], record["validation"], record["best"]))
    log.info("trained %d steps (%s): adapter %s", final.global_step, record["status"], adapter)
    return Outcome(EXIT_OK, adapter)


def _arguments(t, validated: bool, dtype, device, procs: Processes, workers: int, store: TrainingStore):
    """transformers' TrainingArguments for the training section: a log entry per step, validation and checkpoints
    every so many steps (and at the last), no checkpoint rotation (the run store removes what a commit supersedes),
    the early-stopping counter restored with a checkpoint, mixed precision from the model's dtype."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(store.checkpoints), per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size, gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate, lr_scheduler_type=t.lr_scheduler, warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay, max_grad_norm=t.max_grad_norm, num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1, seed=t.seed, data_seed=t.seed, optim="adamw_torch",
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=device.type == "cpu",
        logging_strategy="steps", logging_steps=1, eval_strategy="steps" if validated else "no",
        eval_steps=t.eval_every, metric_for_best_model="eval_loss" if validated else None, greater_is_better=False,
        save_strategy="steps", save_steps=t.checkpoint_every, save_total_limit=None,
        restore_callback_states_from_checkpoint=True, dataloader_num_workers=workers,
        remove_unused_columns=False, label_names=["labels"], report_to="none", disable_tqdm=False,
        ddp_backend=("gloo" if device.type == "cpu" else "nccl") if procs.world > 1 else None,
        ddp_find_unused_parameters=False, include_num_input_tokens_seen="non_padding")


def _compute_dtype(backend):
    """The dtype the model computes in (bf16 weights train under bf16 autocast; float32 on the CPU)."""
    import torch

    model = backend.model
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    for dtype in (torch.bfloat16, torch.float16):
        if dtype in dtypes:
            return dtype
    return torch.float32


def _workers(setting, procs: Processes, n: int) -> int:
    """loader.num_workers per process; auto: the process's share of the allotted CPUs beyond one, at most 8."""
    if setting != "auto":
        return int(setting)
    return max(0, min(allotted_cpus() // procs.local_world - 1, 8, n - 1))


def _lora(seqs, backend, cfg):
    """The model with LoRA on its target layers (PEFT), everything else frozen; gradient checkpointing as set."""
    from peft import LoraConfig, get_peft_model

    from ..models import ModelError

    t = cfg.training
    module = seqs.module
    quantized = cfg.model.quantization != "none"
    if backend.name == "transformers":
        if quantized:
            from peft import prepare_model_for_kbit_training

            module = prepare_model_for_kbit_training(module, use_gradient_checkpointing=t.gradient_checkpointing,
                                                     gradient_checkpointing_kwargs={"use_reentrant": False})
        elif t.gradient_checkpointing:
            module.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        module.gradient_checkpointing = t.gradient_checkpointing
        if quantized:
            module.quantization_method = "bitsandbytes"  # the Trainer must not move bitsandbytes layers
    targets = seqs.lora_targets(t.target_modules)
    config = LoraConfig(r=t.lora_r, lora_alpha=t.lora_alpha, lora_dropout=t.lora_dropout, target_modules=targets,
                        bias="none")
    try:
        peft_model = get_peft_model(module, config)
    except ValueError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelError(f"training.target_modules {t.target_modules or targets}: {first}") from None
    if backend.name == "transformers" and t.gradient_checkpointing and hasattr(module, "disable_input_require_grads"):
        # PEFT makes the embeddings' output require gradients, which only reentrant checkpointing needs (ours is not)
        # and which breaks models that add to it in place (BLIP's text embeddings)
        module.disable_input_require_grads()
    adapted = sorted({n.rsplit(".lora_", 1)[0] for n, _ in peft_model.named_parameters() if ".lora_" in n})
    frozen = [n for n in adapted if any(f".{p}." in f".{n.split('base_model.model.', 1)[-1]}" for p in seqs.frozen)]
    if frozen:
        raise ModelError(f"training.target_modules {t.target_modules}: selects layers of the vision tower "
                         f"({frozen[0].split('base_model.model.', 1)[-1]}), which is never trained")
    return peft_model


def _adapter_config(peft_model, model_cfg) -> dict:
    """adapter_config.json as PEFT writes it (sets as sorted lists), naming the base model as configured."""
    import json

    raw = peft_model.peft_config["default"].to_dict()
    raw.update(base_model_name_or_path=model_cfg.name_or_path, revision=model_cfg.revision)
    return json.loads(json.dumps({k: sorted(v) if isinstance(v, set) else v for k, v in raw.items()}, default=str))


def _adapter_weights(peft_model, seqs, step: int, loss: float | None) -> bytes:
    """The adapter's tensors under the names model.adapter reads, as safetensors bytes (step and validation loss in
    its metadata)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save

    state = get_peft_model_state_dict(peft_model, save_embedding_layers=False)
    tensors = {seqs.export_name(k): v.detach().to("cpu").contiguous() for k, v in state.items()}
    metadata = {"format": "pt", "step": str(step)}
    if loss is not None:
        metadata["eval_loss"] = repr(loss)
    return save(tensors, metadata=metadata)


def _peak_memory(device) -> dict[str, float]:
    """This process's peak resident memory and, on CUDA, peak GPU memory allocated, in GB."""
    import resource

    import torch

    out = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3)}
    if device.type == "cuda":
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(device) / 1e9, 3)
    return out


def _trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _trainer_state(latest):
    from transformers import TrainerState

    return TrainerState.load_from_json(str(latest[0] / "trainer_state.json")) if latest else None


def _versions() -> dict:
    from importlib import metadata

    out = versions()
    for package in ("peft", "accelerate"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = None
    return out


def _record(cfg, store, rid, identity, backend, selections, train, val, final, global_batch, trainable, adapter,
            last, best) -> dict:
    from .record import steps_and_validations, throughput

    steps, validation = steps_and_validations(final.log_history)
    best_entry = min(validation, key=lambda v: (v["loss"], v["step"])) if validation else None
    history = store.history()
    early = final.global_step < final.max_steps
    return {
        "run_id": rid, "status": "early stopped" if early else "ended", "adapter": str(adapter),
        "adapters": {"best": str(best) if best else None, "last": str(last)},
        "config": cfg.to_dict(), "model": backend.describe(), "model_identity": identity,
        "data_files": data_files(cfg.data),
        "splits": {s.name: {"key": key, "studies": len(s.studies), "counts": s.counts}
                   for key, s in (("train_split", train), ("val_split", val)) if s is not None},
        "schedule": {"steps": final.global_step, "max_steps": final.max_steps, "epochs": final.epoch,
                     "global_batch": global_batch, "trainable_parameters": trainable},
        "steps": steps, "validation": validation, "best": best_entry,
        **throughput(history), "starts": history, "versions": _versions(), "project": project_commit(),
    }


__all__ = ["Outcome", "Processes", "finetune", "run_dir"]
