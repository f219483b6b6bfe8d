"""A Detectron2 checkpointer that never leaves a half-written checkpoint behind.

Each checkpoint is written to a temporary file in the output folder, flushed to disk, then renamed
over its final name; the ``last_checkpoint`` pointer is replaced the same way, only after the
checkpoint file is complete. A process killed at any moment therefore leaves ``last_checkpoint``
naming a complete file. Files are read with ``weights_only=True`` (or as safetensors).
"""

import logging
import os
import re
import tempfile
from typing import Any, List

import torch

from ..detector_checkpoint import TensorsOnlyCheckpointer

logger = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointer", "atomic_write_bytes", "atomic_torch_save", "remove_stale_temporary_files"]


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


_TEMPORARY_SUFFIX = ".tmp"
# What tempfile.mkstemp names the temporary file of a save of TARGET: ".TARGET.<random>.tmp".
_TEMPORARY_NAME = re.compile(r"^\.(.+)\.[a-z0-9_]{8}\.tmp$")


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=_TEMPORARY_SUFFIX, dir=directory
    )
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


class AtomicCheckpointer(TensorsOnlyCheckpointer):
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


def remove_stale_temporary_files(directory: str) -> List[str]:
    """Delete the temporary files that saves killed midway left in ``directory``.

    A save writes ``.NAME.XXXXXXXX.tmp`` next to its target and renames it when complete, so such
    a file is never a usable checkpoint; with the optimizer state one can be half a gigabyte.
    Call it when training starts or resumes, before any save of this run.

    Args:
        directory: a training output folder.

    Returns:
        the paths removed.
    """
    if not directory or not os.path.isdir(directory):
        return []
    removed = []
    for name in sorted(os.listdir(directory)):
        match = _TEMPORARY_NAME.match(name)
        if match and (match.group(1).endswith(".pth") or match.group(1) == "last_checkpoint"):
            path = os.path.join(directory, name)
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
            removed.append(path)
    if removed:
        logger.warning("Removed %d temporary files of interrupted checkpoint saves in %s", len(removed), directory)
    return removed
