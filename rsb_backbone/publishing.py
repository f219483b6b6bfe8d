"""Publishing a trained detector: only its tensors and model metadata, named by its hash.

A ``train_net.py`` checkpoint also holds the optimizer state (AdamW: two more tensors per
parameter), the scheduler and the iteration; a published file keeps the ``"model"`` tensors and
the model metadata (class names, category ids) and nothing else, optionally in half precision,
as ``.pth`` (``{"model": ..., "metadata": ...}``) or ``.safetensors`` (metadata as JSON in the
header). Its name ends with the first 8 hex digits of its SHA-256, as mmdetection's
``publish_model.py`` names its files: ``<stem>-<hash8>.pth``.
"""

import hashlib
import io
import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch

from .checkpoint_layouts import DETECTRON2_ENTRY, checkpoint_tensors
from .engine.atomic_checkpointer import atomic_write_bytes
from .model_metadata import (
    METADATA_KEY,
    metadata_to_safetensors_header,
    parse_model_metadata,
    read_model_metadata,
    storable_model_metadata,
)
from .tensor_files import load_tensor_file

logger = logging.getLogger(__name__)

__all__ = ["PublishedModel", "publish_checkpoint", "published_file_name"]

_SUFFIXES = (".pth", ".safetensors")


@dataclass
class PublishedModel:
    """What :func:`publish_checkpoint` wrote.

    Attributes:
        path: the published file.
        sha256: its SHA-256, in hex.
        num_bytes: its size.
        num_tensors: how many model tensors it holds.
        metadata: the model metadata it carries (parsed), or None.
    """

    path: str
    sha256: str
    num_bytes: int
    num_tensors: int
    metadata: Optional[Dict[str, Any]]

    def summary(self) -> str:
        classes = self.metadata["thing_classes"] if self.metadata else None
        names = f"{len(classes)} class names" if classes else "no class names"
        return (
            f"{self.path}: {self.num_tensors} tensors, {names}, "
            f"{self.num_bytes / 2**20:.1f} MiB, sha256 {self.sha256}"
        )


def published_file_name(output: str, sha256: str, *, safetensors: bool) -> str:
    """``output`` without a ``.pth``/``.safetensors`` suffix, then ``-<hash8>`` and the suffix.

    Args:
        output: the requested path, e.g. ``published/mask_rcnn_rsb_shapes.pth``.
        sha256: the file content's SHA-256 in hex.
        safetensors: whether the file is a ``.safetensors`` file.
    """
    stem = output
    for suffix in _SUFFIXES:
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}-{sha256[:8]}{'.safetensors' if safetensors else '.pth'}"


def _model_tensors(path: str) -> Tuple[Dict[str, torch.Tensor], Optional[Dict[str, Any]]]:
    """The model tensors and model metadata of a checkpoint, published file or converted file."""
    loaded = load_tensor_file(path)  # tensors-only
    if path.endswith(".safetensors"):
        return dict(loaded), read_model_metadata(path)
    tensors = checkpoint_tensors(loaded, path, entry=DETECTRON2_ENTRY)
    metadata = loaded.get(METADATA_KEY) if DETECTRON2_ENTRY in loaded else None
    return tensors, parse_model_metadata(metadata, f"{path}: {METADATA_KEY}")


def _serialize(
    tensors: Dict[str, torch.Tensor], metadata: Optional[Dict[str, Any]], *, safetensors: bool
) -> bytes:
    if safetensors:
        from safetensors.torch import save

        # safetensors refuses tensors that share memory: give each its own contiguous copy.
        owned = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
        return save(owned, metadata=metadata_to_safetensors_header(metadata))
    content: Dict[str, Any] = {"model": tensors}
    stored = storable_model_metadata(metadata)
    if stored:
        content[METADATA_KEY] = stored
    buffer = io.BytesIO()
    torch.save(content, buffer)
    return buffer.getvalue()


def publish_checkpoint(
    input_path: str,
    output: str,
    *,
    fp16: bool = False,
    safetensors: bool = False,
) -> PublishedModel:
    """Write the model tensors and model metadata of a checkpoint to ``<stem>-<hash8>.pth``.

    Args:
        input_path: a ``train_net.py`` checkpoint (``model_final.pth``), a converted mmdetection
            checkpoint, a published file, or a bare ``{name: tensor}`` file; read tensors-only.
        output: requested path; the written file is ``output`` without its ``.pth`` or
            ``.safetensors`` suffix, followed by ``-`` and the first 8 hex digits of the file's
            SHA-256, and the suffix (:func:`published_file_name`). Written atomically.
        fp16: store floating point tensors in half precision (halves the size; the loaders cast
            them back to the model's precision, so results may differ slightly).
        safetensors: write a ``.safetensors`` file (metadata as JSON in its header) instead of
            a ``.pth`` file.

    Returns:
        the :class:`PublishedModel`.

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        WeightFileError: unreadable file, unsafe pickle, or no model tensors in it.
    """
    input_path, output = os.fspath(input_path), os.fspath(output)
    tensors, metadata = _model_tensors(input_path)
    if fp16:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    data = _serialize(tensors, metadata, safetensors=safetensors)
    sha256 = hashlib.sha256(data).hexdigest()
    path = published_file_name(output, sha256, safetensors=safetensors)
    atomic_write_bytes(path, data)
    published = PublishedModel(path, sha256, len(data), len(tensors), metadata)
    logger.info(
        "Published %s (%.1f MiB) as %s",
        input_path,
        os.path.getsize(input_path) / 2**20,
        published.summary(),
    )
    return published
