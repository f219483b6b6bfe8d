"""Reading an mmdetection v2.x checkpoint and telling which detector it holds."""

import os
from typing import Any, Dict, Mapping, Tuple

import torch

from ..checkpoint_layouts import MMDETECTION_ENTRY, checkpoint_tensors
from ..tensor_files import WeightFileError, load_tensor_file
from .key_maps import DETECTORS


class MMDetConversionError(WeightFileError):
    """A checkpoint that cannot be converted; the message names the file and the keys."""


def _key_list(keys, limit: int = 8) -> str:
    """The first ``limit`` of the sorted ``keys``, and how many more there are."""
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def load_mmdet_checkpoint(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read an mmdetection checkpoint (``{"meta": {...}, "state_dict": {...}}``, ``meta`` of plain
    values, or a bare ``{name: tensor}`` dict) tensors-only.

    Args:
        path: the ``.pth`` file.

    Returns:
        (state_dict, meta); meta is ``{}`` when the file has none.

    Raises:
        FileNotFoundError: no such file.
        WeightFileError: unreadable, truncated, or would need arbitrary unpickling.
        MMDetConversionError: readable, but not an mmdetection checkpoint.
    """
    path = os.fspath(path)
    loaded = load_tensor_file(path)
    state_dict = checkpoint_tensors(loaded, path, entry=MMDETECTION_ENTRY, error=MMDetConversionError)
    meta = loaded.get("meta") if MMDETECTION_ENTRY in loaded else None
    return state_dict, dict(meta) if isinstance(meta, Mapping) else {}


# Keys that identify each detector besides "backbone.conv1.weight", most specific first; all must
# be present (faster_rcnn: and no mask head).
_SIGNATURES = {
    "retinanet": ("bbox_head.retina_cls.weight", "bbox_head.retina_reg.weight"),
    "cascade_mask_rcnn": (
        "rpn_head.rpn_cls.weight",
        "roi_head.bbox_head.0.fc_cls.weight",
        "roi_head.mask_head.0.conv_logits.weight",
    ),
    "mask_rcnn": (
        "rpn_head.rpn_cls.weight",
        "roi_head.bbox_head.fc_cls.weight",
        "roi_head.mask_head.conv_logits.weight",
    ),
    "faster_rcnn": ("rpn_head.rpn_cls.weight", "roi_head.bbox_head.fc_cls.weight"),
}


def detect_detector(state_dict: Mapping[str, Any], source: str = "<state_dict>") -> str:
    """Which of :data:`DETECTORS` an mmdetection state dict belongs to.

    Only the detector family is told here; whether every tensor fits (depth, classes, heads) is
    checked by the conversion.

    Args:
        state_dict: mmdetection parameter names to tensors.
        source: the file name, for error messages.

    Raises:
        MMDetConversionError: the keys match none of the four detectors.
    """
    keys = set(state_dict)
    has_mask_head = any(k.startswith("roi_head.mask_head.") for k in keys)
    for detector, signature in _SIGNATURES.items():  # most specific first
        if keys.issuperset(signature) and "backbone.conv1.weight" in keys:
            if not (detector == "faster_rcnn" and has_mask_head):
                return detector
    if "roi_head.bbox_head.0.fc_cls.weight" in keys and not has_mask_head:
        hint = "a Cascade R-CNN without mask heads, which has no config here"
    else:
        prefixes = sorted({k.split(".")[0] for k in keys})
        hint = f"its top-level modules are {', '.join(prefixes)}"
    raise MMDetConversionError(
        f"{source}: not a checkpoint of one of the supported mmdetection v2 detectors "
        f"({', '.join(DETECTORS)}, ResNet-FPN); {hint}"
    )
