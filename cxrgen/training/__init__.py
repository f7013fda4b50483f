"""Fine-tuning a report generator with LoRA (``finetune_cxr.py``; README, "Fine-tuning").

    finetune(cfg) -> Outcome(exit_code, adapter)     cxrgen.training.run

Modules: ``sequences`` (per backend: a study's training sequence, token for token what generation feeds the model,
and its labels), ``data`` (the dataset's splits as training examples), ``engine`` (transformers' Trainer with the
project's loss, validation, stop signals and checkpoint commits), ``run`` (a run from start to end, one process or
one per GPU under torchrun), ``record`` (train.json and the loss curve). The run folder belongs to
:class:`cxrgen.runstore.TrainingStore`.
"""

from .run import Outcome, finetune, run_dir

__all__ = ["Outcome", "finetune", "run_dir"]
