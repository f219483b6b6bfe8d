"""Training machinery of the entry point: launch (also under SLURM), training and evaluation
loops, agreed stops on signals, and how a run ends (exit codes and one-line messages)."""

from ..checkpoint.detection_checkpoint import AtomicCheckpointer  # its home; still importable from here
from .launch import describe_process, launch_workers
from .outcomes import NonFiniteLossError, RunOutcome, UserInputError, outcome_of, user_input_stage
from .slurm import SlurmRequeue, parse_signal, slurm_job, srun_task
from .training import do_test, do_train, load_eval_checkpoint, wrap_ddp, write_eval_results
from .yacs_eval import evaluate_yacs, setup_yacs_config

__all__ = [
    "AtomicCheckpointer",
    "launch_workers",
    "describe_process",
    "SlurmRequeue",
    "parse_signal",
    "slurm_job",
    "srun_task",
    "NonFiniteLossError",
    "RunOutcome",
    "UserInputError",
    "outcome_of",
    "user_input_stage",
    "do_test",
    "do_train",
    "load_eval_checkpoint",
    "wrap_ddp",
    "write_eval_results",
    "evaluate_yacs",
    "setup_yacs_config",
]
