"""The expected ends of a run (exceptions) and the exit code and one-line message of each; anything
else is unexpected and keeps its traceback. The table is in docs/failure_behaviour.md."""

import contextlib
import re
from typing import Iterator, NamedTuple, Optional

from ..checkpoint.tensor_files import WeightFileError
from ..utils.errors import OUTPUT_WRITE_EXIT_CODE, OutputWriteError, UserInputError

# A training process of the job ended (SIGKILL, the OOM killer, a failed node), and a collective
# of this one failed: Detectron2's launch reports it as one, too, instead of a traceback.
PROCESS_LOST_EXIT_CODE = 3
# The watchdog (:mod:`.watchdog`) ended a process in which no iteration finished for
# train.watchdog_s seconds; 124, as timeout(1) ends a command that ran out of time.
STALLED_EXIT_CODE = 124
# How gloo names a peer whose connection broke (its errors are plain RuntimeErrors).
_GLOO_LOST_PEER = re.compile(
    r"(?:(?:Read|Write) error )?(?:\[[^\]]*\]:\d+: )?Connection (?:closed|reset) by peer(?: \[[^\]]*\](?::\d+)?)?"
)


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
    lost = lost_process_message(error)
    if lost is not None:
        return RunOutcome(PROCESS_LOST_EXIT_CODE, lost)
    return None


def lost_process_message(error: BaseException) -> Optional[str]:
    """The one-line message when ``error`` says that another process of the job is gone (a gloo
    connection closed by its peer, or PyTorch's distributed network error), else None."""
    import torch.distributed as dist

    found = _GLOO_LOST_PEER.search(str(error)) if isinstance(error, RuntimeError) else None
    if found is None and not isinstance(error, getattr(dist, "DistNetworkError", ())):
        return None
    what = found.group(0) if found else str(error).strip().splitlines()[0]
    return (
        f"error: another training process of the job ended (killed, out of memory, or its node failed: "
        f"{what}); the newest checkpoint is kept; continue with --resume"
    )
