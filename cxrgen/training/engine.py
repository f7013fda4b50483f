"""transformers' Trainer as fine-tuning runs it: the loss, the validation loss, and the callbacks that make a run
crash-safe and resumable.

* **Loss**: the summed negative log-likelihood of the label positions (reference and end tokens) divided by the
  number of label tokens in the whole optimizer step (all micro-batches, all processes: the Trainer counts them
  before the step), so one process with a batch of 8 and two with 4 each compute the same gradient.
* **Validation loss**: the same sum over the validation studies divided by their label tokens, each process
  scoring its share (study i on process i mod n) and the sums added across processes.
* **Best adapter**: written to ``best/`` whenever the validation loss improves on the best so far (the trainer
  state's ``best_metric``, which checkpoints keep); early stopping is transformers' EarlyStoppingCallback.
* **Stop signals**: SIGTERM/SIGUSR1/SIGINT set a flag; after each optimizer step the processes agree on it (one
  all-reduce), save a checkpoint at that step and stop.
* **Commits**: after every checkpoint save, once every process has written its part, rank 0 commits it
  (:meth:`cxrgen.runstore.TrainingStore.commit`).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from transformers import EarlyStoppingCallback, Trainer, TrainerCallback

from ..runner import progress_bar
from .sequences import IGNORE, collate

log = logging.getLogger("cxrgen")


def token_nll(outputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed negative log-likelihood, number of label tokens): position t's logits predict label t + 1."""
    logits = getattr(outputs, "logits", outputs)
    target = labels[:, 1:]
    counted = target != IGNORE
    nll = F.cross_entropy(logits[:, :-1][counted].float(), target[counted], reduction="sum")
    return nll, counted.sum()


def step_loss(outputs, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
    """The Trainer's ``compute_loss_func``: this micro-batch's share of the step's mean token loss."""
    nll, count = token_nll(outputs, labels)
    return nll / (num_items_in_batch if num_items_in_batch is not None else count)


def _all_reduce(tensor: torch.Tensor, op=None) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor, op=op or torch.distributed.ReduceOp.SUM)
    return tensor


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class ReportTrainer(Trainer):
    """The Trainer with the validation loss of the module docstring; ``on_best(step, loss)`` (rank 0) writes the
    best adapter."""

    def __init__(self, *args, pad_id: int = 0, on_best: Callable[[int, float], None] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.pad_id, self.on_best = pad_id, on_best

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        args, model = self.args, self.model
        share = torch.utils.data.Subset(self.eval_dataset, range(args.process_index, len(self.eval_dataset),
                                                                 args.world_size))
        loader = torch.utils.data.DataLoader(
            share, batch_size=args.per_device_eval_batch_size, num_workers=args.dataloader_num_workers,
            collate_fn=functools.partial(collate, pad_id=self.pad_id), generator=torch.Generator())
        sums = torch.zeros(2, dtype=torch.float64, device=args.device)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for batch in loader:
                batch = self._prepare_inputs(batch)
                labels = batch.pop("labels")
                nll, count = token_nll(model(**batch), labels)
                sums += torch.stack([nll.double(), count.double()])
        model.train(was_training)
        loss = float(_all_reduce(sums)[0] / sums[1])
        best = self.state.best_metric
        if self.args.should_save and self.on_best is not None and (best is None or loss < best):
            self.on_best(self.state.global_step, loss)
        metrics = {f"{metric_key_prefix}_loss": loss}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


class EarlyStopping(EarlyStoppingCallback):
    """transformers' early stopping on the validation loss. Nothing is loaded at the end (the best adapter is
    written as it improves), so its warning about load_best_model_at_end does not apply."""

    def on_train_begin(self, args, state, control, **kwargs):
        return control


class RunCallback(TrainerCallback):
    """Progress, a log line per validation, stop signals, checkpoint commits (see the module docstring).

    ``commit(folder, state, ended)`` runs on rank 0 after every process has saved its part of a checkpoint
    (``ended``: training stops here, not interrupted)."""

    def __init__(self, stop, commit: Callable, progress: bool, device: torch.device):
        self.stop, self.commit, self.progress, self.device = stop, commit, progress, device
        self.interrupted = False
        self.steps_run = 0  # optimizer steps taken by this start
        self.bar = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = progress_bar(state.max_steps, self.progress and args.should_save, "step", state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs and "loss" in logs:
            self.bar.set_postfix(loss=f"{logs['loss']:.4f}", refresh=False)

    def on_step_end(self, args, state, control, **kwargs):
        self.steps_run += 1
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
        flag = torch.tensor([0.0 if self.stop.signal is None else 1.0], device=self.device)
        if float(_all_reduce(flag, torch.distributed.ReduceOp.MAX if torch.distributed.is_available() else None)):
            if not control.should_training_stop:
                log.warning("stopping after step %d of %d: saving a checkpoint", state.global_step, state.max_steps)
            self.interrupted = not control.should_training_stop  # the last step is a finished run
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if loss is not None and args.should_save:
            best = state.best_metric
            verdict = "new best" if best is None or loss < best else f"best {best:.4f} at step {state.best_global_step}"
            line = f"step {state.global_step}/{state.max_steps}: validation loss {loss:.4f} ({verdict})"
            (self.bar.write if self.bar is not None and not self.bar.disable else log.info)(line)
        if control.should_training_stop:  # early stopping: keep the state it stopped in
            control.should_save = True
        return control

    def on_save(self, args, state, control, **kwargs):
        barrier()  # every process has written its RNG state (rank 0: adapter, optimizer, scheduler, trainer state)
        if args.should_save:
            ended = control.should_training_stop and not self.interrupted
            self.commit(Path(args.output_dir) / f"checkpoint-{state.global_step}", state, ended)
        barrier()
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
