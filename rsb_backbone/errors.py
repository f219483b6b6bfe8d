"""The exception for bad input found anywhere in the project (imports nothing of the project)."""

import re

__all__ = ["UserInputError"]


def _original_message(message: str, class_name: str) -> str:
    """The message before PyTorch re-raised it from a DataLoader worker as ``type(e)("Caught X in
    DataLoader worker process 0.\\nOriginal Traceback ...\\nX: message")`` (its last line)."""
    if message.startswith(f"Caught {class_name} in DataLoader worker") and "Original Traceback" in message:
        match = re.match(rf"^(?:[\w.]+\.)?{class_name}: (.*)$", message.rstrip().splitlines()[-1])
        if match:
            return match.group(1)
    return message


class UserInputError(Exception):
    """Bad input (a file, key or value the user gave); ``train_net.py`` reports it as one line
    and exits with code 2.

    Args:
        message: one line naming the file, key or value and what was expected.
    """

    def __init__(self, message: str):
        super().__init__(_original_message(str(message), type(self).__name__))
