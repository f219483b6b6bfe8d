"""A Detectron2 checkpointer that never leaves a half-written checkpoint behind: each file is
written to a temporary file, flushed and renamed into place, ``last_checkpoint`` only after the
checkpoint is complete (README, "Failure behaviour"); files are read as tensors only."""

import contextlib
import logging
import os
import re
import tempfile
from typing import Any

import torch

from ..detector_checkpoint import TensorsOnlyCheckpointer

logger = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointer", "atomic_write_bytes", "atomic_torch_save", "remove_stale_temporary_files"]


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# What tempfile.mkstemp names the temporary file of a save of TARGET: ".TARGET.<random>.tmp".
_TEMPORARY_NAME = re.compile(r"^\.(.+\.pth|last_checkpoint)\.[a-z0-9_]{8}\.tmp$")


def _atomic_write(path: str, write) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
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
    """:class:`DetectionCheckpointer` (same arguments) with atomic saves and tensors-only loading."""

    def save(self, name: str, **kwargs: Any) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {key: obj.state_dict() for key, obj in {"model": self.model, **self.checkpointables}.items()}
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info("Saving checkpoint to %s", save_file)
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_bytes(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename.encode())


def remove_stale_temporary_files(directory: str) -> None:
    """Delete the temporary files (``.NAME.XXXXXXXX.tmp``, never usable, maybe half a gigabyte) that
    saves killed midway left in ``directory``; call it before the first save of a run.

    Args:
        directory: a training output folder.
    """
    removed = 0
    for name in os.listdir(directory) if directory and os.path.isdir(directory) else []:
        if _TEMPORARY_NAME.match(name):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(directory, name))
                removed += 1
    if removed:
        logger.warning("Removed %d temporary files of interrupted checkpoint saves in %s", removed, directory)
