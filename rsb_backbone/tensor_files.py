"""Reading untrusted weight files without unpickling arbitrary objects: ``.safetensors`` files, or
``torch.load(weights_only=True)``, which refuses pickles of anything but tensors and plain containers.
"""

import os
import pickle
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file


class WeightFileError(ValueError):
    """A weight or checkpoint file that cannot be used; the message names the file."""


def one_line_summary(error: BaseException) -> str:
    """The message of ``error`` on one line, shortened to 200 characters, for a one-line error."""
    text = " ".join(str(error).split())
    return text if len(text) <= 200 else text[:197] + "..."


def first_items(items: Sequence[Any], shown: int = 5) -> str:
    """``[a, b, c, d, e, ... (7 in all)]``: the first ``shown`` of ``items``, for one-line messages."""
    more = f", ... ({len(items)} in all)" if len(items) > shown else ""
    return "[" + ", ".join(str(i) for i in items[:shown]) + more + "]"


def load_tensor_file(path: str) -> Any:
    """Load a ``.safetensors`` or PyTorch file safely, on the CPU.

    Args:
        path: the file to read.

    Returns:
        A dict of tensors (``.safetensors``), or the tensor container saved (usually a dict).

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        WeightFileError: when the file is corrupted, truncated, or would need arbitrary unpickling.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: weight file does not exist")
    if path.endswith(".pkl"):
        raise WeightFileError(
            f"{path}: .pkl files are plain pickles, which can run code when loaded; "
            f"convert them to .safetensors or a weights_only PyTorch file first"
        )
    safetensors = path.endswith(".safetensors")
    try:
        return load_file(path, device="cpu") if safetensors else torch.load(path, "cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise WeightFileError(
            f"{path}: refused to load, the file holds Python objects other than tensors "
            f"(only weights_only=True pickles and .safetensors files are accepted)"
        ) from e
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        kind = "safetensors file" if safetensors else "PyTorch checkpoint, truncated or corrupted"
        raise WeightFileError(f"{path}: not a readable {kind} ({one_line_summary(e)})") from e
