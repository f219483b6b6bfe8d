"""How bad input is reported: the exception for it, the helpers that keep its message on one line,
and how the command-line tools of ``projects/`` turn it into one logged line and exit code 2.
Imports nothing of the project."""

import logging
import re
import sys
from typing import Any, Callable, Sequence


class UserInputError(Exception):
    """Bad input (a file, key or value the user gave); the entry point reports it as one line and
    exits with code 2.

    Args:
        message: one line naming the file, key or value and what was expected.
    """

    def __init__(self, message: str):
        # PyTorch re-raises an error of a DataLoader worker as ``type(e)("Caught X in DataLoader worker
        # process 0.\nOriginal Traceback ...\nX: message")``, and no public API keeps the original
        # exception: keep the original message (its last line) by parsing that text.
        name = type(self).__name__
        pattern = rf"Caught {name} in DataLoader worker.*Original Traceback.*\n(?:[\w.]+\.)?{name}: ([^\n]*)"
        match = re.fullmatch(pattern, str(message).rstrip(), re.DOTALL)
        super().__init__(match.group(1) if match else str(message))


class OutputWriteError(OSError):
    """An output file (checkpoint, ``last_checkpoint``, evaluation results, an export, a published
    file) that could not be written, e.g. on a full disk or over a quota; nothing half-written is
    left under its name. Reported as one line with exit code :data:`OUTPUT_WRITE_EXIT_CODE`.

    Args:
        path: the file that was being written.
        error: the operating system's error (its ``strerror``, e.g. "No space left on device").
    """

    def __init__(self, path: str, error: OSError):
        super().__init__(error.errno, f"{path}: cannot be written ({error.strerror or error})")
        self.path = path

    def __str__(self) -> str:
        return self.strerror


# sysexits.h's EX_IOERR: an output could not be written (disk full, quota, I/O error).
OUTPUT_WRITE_EXIT_CODE = 74


def one_line_summary(error: BaseException) -> str:
    """The message of ``error`` on one line, shortened to 200 characters, for a one-line error."""
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def first_items(items: Sequence[Any], shown: int = 5) -> str:
    """``[a, b, c, d, e, ... (7 in all)]``: the first ``shown`` of ``items``, for one-line messages."""
    more = f", ... ({len(items)} in all)" if len(items) > shown else ""
    return "[" + ", ".join(str(i) for i in items[:shown]) + more + "]"


def run_command(main: Callable[[], int]) -> None:
    """Run a command's ``main`` with INFO logging and exit with its return code; bad input (a
    missing file, a wrong value, an unreadable image) is one logged line and exit code 2, an output
    that cannot be written (:class:`OutputWriteError`) one line and :data:`OUTPUT_WRITE_EXIT_CODE`.

    Args:
        main: the command's entry point, returning its exit code.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(main())
    except OutputWriteError as e:
        logging.getLogger(main.__module__).error("%s", e)
        sys.exit(OUTPUT_WRITE_EXIT_CODE)
    except (ValueError, OSError) as e:  # FileNotFoundError is an OSError
        logging.getLogger(main.__module__).error("%s", e)
        sys.exit(2)
