"""Publishing a trained detector: only its ``"model"`` tensors and model metadata, as ``.pth`` or
``.safetensors``, named ``<stem>-<hash8>.pth`` as mmdetection's ``publish_model.py`` names its files.
"""

import hashlib
import io
import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Dict, Optional

import torch

from .catalog import local_checkpoint_path
from .checkpoint_layouts import DETECTRON2_ENTRY, checkpoint_tensors
from ..utils.file_io import atomic_write_bytes
from .model_metadata import (
    METADATA_KEY,
    metadata_to_safetensors_header,
    read_model_metadata,
    storable_model_metadata,
)
from .tensor_files import load_tensor_file

logger = logging.getLogger(__name__)


@dataclass
class PublishedModel:
    """What :func:`publish_checkpoint` wrote: file, SHA-256 (hex), size, tensors, model metadata or None."""

    path: str
    sha256: str
    num_bytes: int
    num_tensors: int
    metadata: Optional[Dict[str, Any]]


def published_file_name(output: str, sha256: str, *, safetensors: bool) -> str:
    """``output`` without a ``.pth``/``.safetensors`` suffix, then ``-<hash8>`` and the suffix.

    Args:
        output: the requested path, e.g. ``published/mask_rcnn_rsb_shapes.pth``.
        sha256: the file content's SHA-256 in hex.
        safetensors: whether the file is a ``.safetensors`` file.
    """
    stem = re.sub(r"\.(pth|safetensors)$", "", output)
    return f"{stem}-{sha256[:8]}{'.safetensors' if safetensors else '.pth'}"


def publish_checkpoint(
    input_path: str, output: str, *, fp16: bool = False, safetensors: bool = False
) -> PublishedModel:
    """Write the model tensors and model metadata of a checkpoint to ``<stem>-<hash8>.pth``.

    Args:
        input_path: a training checkpoint (``model_final.pth``), a converted mmdetection
            checkpoint, a published file, or a bare ``{name: tensor}`` file; read tensors-only.
            A released detector's name (``mmdet://...``) is fetched into the cache first.
        output: requested path; written atomically, named by :func:`published_file_name`.
        fp16: store floating point tensors in half precision (the loaders cast them back to the
            model's precision, so results may differ slightly).
        safetensors: write a ``.safetensors`` file instead of a ``.pth`` file.

    Returns:
        the :class:`PublishedModel`.

    Raises:
        FileNotFoundError: ``input_path`` does not exist.
        WeightFileError: unreadable file, unsafe pickle, or no model tensors in it.
    """
    input_path, output = local_checkpoint_path(input_path), os.fspath(output)
    loaded = load_tensor_file(input_path)
    tensors = checkpoint_tensors(loaded, input_path, entry=DETECTRON2_ENTRY)
    metadata = read_model_metadata(input_path, loaded)
    if fp16:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    if safetensors:
        from safetensors.torch import save

        # safetensors refuses tensors that share memory: give each its own contiguous copy.
        owned = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
        data = save(owned, metadata=metadata_to_safetensors_header(metadata))
    else:
        buffer = io.BytesIO()
        stored = storable_model_metadata(metadata)
        torch.save({"model": tensors, METADATA_KEY: stored} if stored else {"model": tensors}, buffer)
        data = buffer.getvalue()
    sha256 = hashlib.sha256(data).hexdigest()
    path = published_file_name(output, sha256, safetensors=safetensors)
    atomic_write_bytes(path, data)
    names = f"{len(metadata['thing_classes'])} class names" if metadata else "no class names"
    logger.info(
        "Published %s (%.1f MiB) as %s: %d tensors, %s, %.1f MiB, sha256 %s",
        input_path,
        os.path.getsize(input_path) / 2**20,
        path,
        len(tensors),
        names,
        len(data) / 2**20,
        sha256,
    )
    return PublishedModel(path, sha256, len(data), len(tensors), metadata)
