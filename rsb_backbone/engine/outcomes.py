"""How a training or evaluation run ends: the exceptions that stand for an expected end, and the
exit code and one-line message of each.

Three kinds of expected ends are reported as one line on stderr, without a traceback:

- :class:`UserInputError` (exit code 2): bad input, naming the file, key or value. Errors of the
  types in :data:`SETUP_ERROR_TYPES` raised while a run is being set up (config, data sets, model,
  checkpoint) become one inside :func:`user_input_stage`; later they are bugs and keep their
  traceback.
- :class:`NonFiniteLossError` (exit code 1): a loss stopped being finite.
- :class:`TrainingInterrupted` (exit code 128 + signal): a stop signal arrived; the checkpoint is
  saved.

Everything else is unexpected: exit code 1 with the full traceback.
"""

import contextlib
from typing import Iterator, NamedTuple, Optional

from ..errors import UserInputError
from ..tensor_files import WeightFileError

__all__ = [
    "UserInputError",
    "NonFiniteLossError",
    "TrainingInterrupted",
    "SETUP_ERROR_TYPES",
    "RunOutcome",
    "outcome_of",
    "user_input_stage",
]


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite (on any process); raised before the optimizer step."""


class TrainingInterrupted(Exception):
    """Raised on every process after a stop signal, once the checkpoint is saved.

    Deliberately not a ``KeyboardInterrupt``: process launchers treat that as "killed by the
    parent" and would report success.

    Args:
        message: what happened, e.g. "stopped by SIGTERM after iteration 12; checkpoint saved".
        signum: the signal that stopped training.
    """

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum

    def __reduce__(self):
        return (type(self), (self.args[0], self.signum))


# Raised while a run is set up, these mean bad input: a missing file, a wrong value, an unknown
# data set name, an unreadable checkpoint.
SETUP_ERROR_TYPES = (FileNotFoundError, ValueError, KeyError, WeightFileError)


@contextlib.contextmanager
def user_input_stage() -> Iterator[None]:
    """Within this block, :data:`SETUP_ERROR_TYPES` errors are reported as bad input.

    Use it around reading configs, registering data sets, building the model, data loaders and
    optimizer, and loading checkpoints; not around training itself, where such an error is a bug
    whose traceback must be kept.
    """
    try:
        yield
    except UserInputError:
        raise
    except SETUP_ERROR_TYPES as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise UserInputError(str(message)) from e


class RunOutcome(NamedTuple):
    """An expected end of a run: its exit code and one-line message."""

    exit_code: int
    message: str


def outcome_of(error: BaseException, prog: str = "train_net.py") -> Optional[RunOutcome]:
    """The exit code and one-line message for an expected end, None for anything unexpected.

    Args:
        error: the exception that ended the run.
        prog: the program name that starts the message.
    """
    if isinstance(error, UserInputError):
        return RunOutcome(2, f"{prog}: error: {error}")
    if isinstance(error, NonFiniteLossError):
        return RunOutcome(1, f"{prog}: error: {error}; the last complete checkpoint is kept")
    if isinstance(error, TrainingInterrupted):
        return RunOutcome(128 + error.signum, f"{prog}: {error}; continue with --resume")
    return None
