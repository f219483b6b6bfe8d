"""A Detectron2 checkpointer that never leaves a half-written checkpoint behind.

Each checkpoint is written to a temporary file in the output folder, flushed to disk, then renamed
over its final name; the ``last_checkpoint`` pointer is replaced the same way, only after the
checkpoint file is complete. A process killed at any moment therefore leaves ``last_checkpoint``
naming a complete file. Files are read with ``weights_only=True`` (or as safetensors).
"""

import logging
import os
import tempfile
from typing import Any, Dict

import torch

from detectron2.checkpoint import DetectionCheckpointer

from ..weight_files import WeightFileError, load_tensor_file

logger = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointer", "atomic_write_bytes", "atomic_torch_save"]


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    _atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename."""
    _atomic_write(path, lambda f: torch.save(obj, f))


class AtomicCheckpointer(DetectionCheckpointer):
    """:class:`DetectionCheckpointer` with atomic saves and tensors-only loading.

    Args are those of :class:`DetectionCheckpointer` (model, save_dir, checkpointables...).
    """

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_bytes(
            os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename.encode("utf-8")
        )

    def _load_file(self, filename: str) -> Dict[str, Any]:
        loaded = load_tensor_file(filename)
        if not isinstance(loaded, dict):
            raise WeightFileError(f"{filename}: expected a dict checkpoint, got {type(loaded).__name__}")
        if "model" not in loaded:
            loaded = {"model": loaded}
        loaded.setdefault("matching_heuristics", False)
        return loaded
