"""Writing files so that a reader never sees half of one: each is written to a temporary file in
the same folder, flushed and renamed into place (docs/failure_behaviour.md); a write that fails
(a full disk, a quota) removes its temporary file and raises :class:`OutputWriteError` naming the
file; and removing the temporary files that a killed writer left."""

import contextlib
import logging
import os
import re
import tempfile
from typing import Any, BinaryIO, Callable, Optional

import torch

from .errors import OutputWriteError

logger = logging.getLogger(__name__)


def _fsync_dir(directory: str) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# What tempfile.mkstemp names the temporary file of a save of TARGET: ".TARGET.<random>.tmp".
_TEMPORARY_NAME = re.compile(r"^\.(.+\.pth|last_checkpoint)\.[a-z0-9_]{8}\.tmp$")


def _default_file_mode() -> int:
    """What ``open(path, "w")`` would give a new file: 0o666 less the process's umask."""
    umask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(umask)
    return 0o666 & ~umask


class _WriteErrorRecorder:
    """A binary file's ``write``/``flush`` that keep the operating system's error: ``torch.save``
    replaces it with a RuntimeError ("unexpected pos ...") that no longer says the disk is full."""

    def __init__(self, file):
        self._file = file
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        try:
            return self._file.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self._file.flush()


def atomic_write(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Create ``path`` through a temporary file in its folder, renamed into place only when
    ``write`` returns; when it raises, the temporary file is removed and ``path`` is untouched.

    Args:
        path: the file to write.
        write: writes the content to the binary file it is given; raises to abandon it.

    Raises:
        OutputWriteError: the operating system refused a write (e.g. no space left on the device).
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp_path = None
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
        # mkstemp creates the file readable by its owner only; the result gets the permissions of any
        # other file the user writes (colleagues on a shared cluster read checkpoints too).
        os.fchmod(fd, _default_file_mode())
        with os.fdopen(fd, "wb") as f:
            recorder = _WriteErrorRecorder(f)
            try:
                write(recorder)
            except RuntimeError as e:
                if recorder.error is None:
                    raise
                raise recorder.error from e
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException as e:
        if tmp_path is not None and os.path.exists(tmp_path):
            os.remove(tmp_path)
        if isinstance(e, OSError) and not isinstance(e, OutputWriteError):  # full disk, quota, I/O error
            raise OutputWriteError(path, e) from e
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename.

    Raises:
        OutputWriteError: the file could not be written (e.g. no space left on the device); the
            previous file of that name, if any, is unchanged and no temporary file is left.
    """
    atomic_write(path, lambda f: f.write(data))


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save`` to ``path`` through a temporary file and an atomic rename.

    Raises:
        OutputWriteError: as :func:`atomic_write_bytes`.
    """
    atomic_write(path, lambda f: torch.save(obj, f))


def check_output_dir(path: str, key: str = "train.output_dir") -> None:
    """Check, without creating anything, that the output folder ``path`` exists or can be created,
    and that files can be written in it.

    Args:
        path: the folder.
        key: the config key that gave it, for the message.

    Raises:
        ValueError: ``path`` is a file, lies below a file, or is not writable (one line naming it).
    """
    if not path:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{key}={path} is a file; expected a folder for the run's outputs")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):  # the folder that its creation would start from
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ValueError(f"{key}={path}: cannot be created, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{key}={path}: cannot write in {existing} (permission denied)")


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
