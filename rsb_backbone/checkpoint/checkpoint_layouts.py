"""The tensors of a loaded checkpoint in Detectron2's, mmdetection's or a bare ``{name: tensor}`` layout."""

from typing import Any, Dict, Type

import torch

from .tensor_files import WeightFileError

DETECTRON2_ENTRY = "model"
MMDETECTION_ENTRY = "state_dict"

_WHAT_TO_DO = {
    DETECTRON2_ENTRY: "the layout of a Detectron2 checkpoint, not mmdetection's 'state_dict'; it needs no "
    "conversion (load it with train.init_checkpoint=...)",
    MMDETECTION_ENTRY: "the layout of an mmdetection checkpoint; convert it first with "
    "projects/mmdet_checkpoints/convert_mmdet_checkpoint.py",
}


def checkpoint_tensors(
    loaded: Any, path: str, *, entry: str, error: Type[WeightFileError] = WeightFileError
) -> Dict[str, torch.Tensor]:
    """The dict of tensors under ``entry`` of a loaded checkpoint (or the bare dict of tensors).

    Args:
        loaded: what tensors-only loading of ``path`` returned.
        path: the file, named in errors.
        entry: :data:`DETECTRON2_ENTRY` or :data:`MMDETECTION_ENTRY`, the layout expected.
        error: the exception class to raise.

    Raises:
        ``error``: not a dict, the other library's layout, empty, or holding other than tensors.
    """
    if not isinstance(loaded, dict):
        raise error(f"{path}: expected a dict checkpoint, got a {type(loaded).__name__}")
    other = MMDETECTION_ENTRY if entry == DETECTRON2_ENTRY else DETECTRON2_ENTRY
    if entry not in loaded and other in loaded:
        raise error(f"{path}: has a {other!r} entry, {_WHAT_TO_DO[other]}")
    tensors = loaded.get(entry, loaded)
    if not isinstance(tensors, dict) or not tensors:
        raise error(f"{path}: {entry!r} is empty or not a dict of tensors")
    not_tensors = [k for k, v in tensors.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise error(
            f"{path}: {entry!r} entry {not_tensors[0]!r} is a {type(tensors[not_tensors[0]]).__name__}, "
            f"not a tensor ({len(not_tensors)} such entries)"
        )
    return dict(tensors)
