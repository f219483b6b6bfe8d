"""Training machinery used by ``train_net.py``: atomic checkpoints, hooks, launch, loops."""

from .checkpoint import AtomicCheckpointer, atomic_torch_save, atomic_write_bytes
from .config_checks import resolve_device, sync_num_classes
from .lazy_config import load_config_with_overrides
from .hooks import CheckpointOnSignalHook, GradientClipHook, TrainingInterrupted
from .launch import launch_workers, started_by_torchrun
from .trainers import NonFiniteLossError, build_trainer
from .training import build_model, do_test, do_train, wrap_ddp, write_eval_results

__all__ = [
    "AtomicCheckpointer",
    "atomic_torch_save",
    "atomic_write_bytes",
    "load_config_with_overrides",
    "resolve_device",
    "sync_num_classes",
    "CheckpointOnSignalHook",
    "GradientClipHook",
    "TrainingInterrupted",
    "launch_workers",
    "started_by_torchrun",
    "NonFiniteLossError",
    "build_trainer",
    "build_model",
    "do_test",
    "do_train",
    "wrap_ddp",
    "write_eval_results",
]
