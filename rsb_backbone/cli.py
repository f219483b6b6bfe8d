"""How the project's command-line tools (``projects/*/*.py``) start and report bad input."""

import logging
import sys
from typing import Callable

__all__ = ["run_command"]


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
