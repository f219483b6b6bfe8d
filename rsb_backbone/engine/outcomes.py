"""The expected ends of a run (exceptions) and the exit code and one-line message of each; anything
else is unexpected and keeps its traceback. The table is in docs/failure_behaviour.md."""

import contextlib
from typing import Iterator, NamedTuple, Optional

from ..checkpoint.tensor_files import WeightFileError
from ..utils.errors import OUTPUT_WRITE_EXIT_CODE, OutputWriteError, UserInputError


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite (on any process); raised before the optimizer step."""


class TrainingInterrupted(Exception):
    """Raised on every process after a stop signal, once the checkpoint is saved. Not a
    ``KeyboardInterrupt``: launchers take that for "killed by the parent" and report success.

    Args:
        message: what happened, e.g. "stopped by SIGTERM after iteration 12; checkpoint saved".
        signum: the signal that stopped training.
        next_step: what the user does next (or what happens next, after a SLURM requeue).
    """

    def __init__(self, message: str, signum: int, next_step: str = "continue with --resume"):
        super().__init__(message)
        self.signum = signum
        self.next_step = next_step


@contextlib.contextmanager
def user_input_stage() -> Iterator[None]:
    """Within this block (setting a run up), errors that mean bad input (a missing file, a wrong
    value, an unknown name) become :class:`UserInputError`; later they are bugs and keep their traceback."""
    try:
        yield
    except (FileNotFoundError, ValueError, KeyError, WeightFileError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise UserInputError(str(message)) from e


class RunOutcome(NamedTuple):
    """An expected end of a run: its exit code and one-line message, which the entry point prints
    after its program name ("train: error: ...")."""

    exit_code: int
    message: str


def outcome_of(error: BaseException) -> Optional[RunOutcome]:
    """The exit code and one-line message for an expected end, None for anything unexpected.

    Args:
        error: the exception that ended the run.
    """
    if isinstance(error, UserInputError):
        return RunOutcome(2, f"error: {error}")
    if isinstance(error, OutputWriteError):
        return RunOutcome(
            OUTPUT_WRITE_EXIT_CODE, f"error: {error}; earlier checkpoints and last_checkpoint are kept"
        )
    if isinstance(error, NonFiniteLossError):
        return RunOutcome(1, f"error: {error}; the last complete checkpoint is kept")
    if isinstance(error, TrainingInterrupted):
        return RunOutcome(128 + error.signum, f"{error}; {error.next_step}")
    return None
