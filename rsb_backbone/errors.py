"""The exception for bad input found anywhere in the project (imports nothing of the project)."""

import re

__all__ = ["UserInputError"]


class UserInputError(Exception):
    """Bad input (a file, key or value the user gave); ``train_net.py`` reports it as one line
    and exits with code 2.

    Args:
        message: one line naming the file, key or value and what was expected.
    """

    def __init__(self, message: str):
        # PyTorch re-raises an error of a DataLoader worker as ``type(e)("Caught X in DataLoader worker
        # process 0.\nOriginal Traceback ...\nX: message")``: keep the original message (its last line).
        name = type(self).__name__
        pattern = rf"Caught {name} in DataLoader worker.*Original Traceback.*\n(?:[\w.]+\.)?{name}: ([^\n]*)"
        match = re.fullmatch(pattern, str(message).rstrip(), re.DOTALL)
        super().__init__(match.group(1) if match else str(message))
