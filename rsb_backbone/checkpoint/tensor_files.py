"""Reading untrusted weight files without unpickling arbitrary objects: ``.safetensors`` files, or
``torch.load(weights_only=True)``, which refuses pickles of anything but tensors and plain containers.
"""

import os
import pickle
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..utils.errors import one_line_summary


class WeightFileError(ValueError):
    """A weight or checkpoint file that cannot be used; the message names the file."""


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
