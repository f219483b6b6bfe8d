"""Training machinery used by ``train_net.py``: atomic checkpoints, hooks, launch, loops, and
how a run ends (exit codes and one-line messages)."""

from .atomic_checkpointer import AtomicCheckpointer, atomic_torch_save, atomic_write_bytes, remove_stale_temporary_files
from .hooks import GradientClipHook
from .launch import launch_workers, started_by_torchrun
from .outcomes import NonFiniteLossError, TrainingInterrupted, UserInputError, outcome_of, user_input_stage
from .stop_signals import CheckpointOnSignalHook, forward_stop_signals, ignore_stop_signals_in_workers
from .trainers import build_trainer
from .training import do_test, do_train, load_eval_checkpoint, wrap_ddp, write_eval_results

__all__ = [
    "AtomicCheckpointer",
    "atomic_torch_save",
    "atomic_write_bytes",
    "remove_stale_temporary_files",
    "CheckpointOnSignalHook",
    "GradientClipHook",
    "TrainingInterrupted",
    "NonFiniteLossError",
    "UserInputError",
    "outcome_of",
    "user_input_stage",
    "forward_stop_signals",
    "ignore_stop_signals_in_workers",
    "launch_workers",
    "started_by_torchrun",
    "build_trainer",
    "do_test",
    "do_train",
    "load_eval_checkpoint",
    "wrap_ddp",
    "write_eval_results",
]
