"""mmdetection v2.x checkpoints of the four RSB detectors as Detectron2 checkpoints.

Command line: ``projects/mmdet_checkpoints/convert_mmdet_checkpoint.py``. Key tables and the one
tensor transform (RetinaNet's anchor order): :mod:`.key_maps`.
"""

from .checkpoints import MMDetConversionError, detect_detector, load_mmdet_checkpoint
from .convert import (
    DEFAULT_CONFIGS,
    ConversionReport,
    build_target_model,
    convert_mmdet_checkpoint,
    convert_state_dict,
)
from .key_maps import DETECTORS, RETINANET_ANCHOR_ORDER, map_key, permute_anchor_blocks

__all__ = [
    "DETECTORS",
    "DEFAULT_CONFIGS",
    "RETINANET_ANCHOR_ORDER",
    "ConversionReport",
    "MMDetConversionError",
    "build_target_model",
    "convert_mmdet_checkpoint",
    "convert_state_dict",
    "detect_detector",
    "load_mmdet_checkpoint",
    "map_key",
    "permute_anchor_blocks",
]
