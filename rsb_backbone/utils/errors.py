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
    missing file, a wrong value, an unreadable image) is one logged line and exit code 2.

    Args:
        main: the command's entry point, returning its exit code.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        sys.exit(main())
    except (ValueError, OSError) as e:  # FileNotFoundError is an OSError
        logging.getLogger(main.__module__).error("%s", e)
        sys.exit(2)
