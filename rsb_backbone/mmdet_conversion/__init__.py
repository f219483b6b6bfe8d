"""mmdetection v2.x checkpoints of the four RSB detectors as Detectron2 checkpoints (command line:
``projects/mmdet_checkpoints/convert_mmdet_checkpoint.py``; key tables: :mod:`.key_maps`)."""

from .convert import DEFAULT_CONFIGS, MMDetConversionError, convert_mmdet_checkpoint
from .convert import convert_state_dict, detect_detector
from .key_maps import DETECTORS, RETINANET_ANCHOR_ORDER, map_key, permute_anchor_blocks

__all__ = [
    "DETECTORS",
    "DEFAULT_CONFIGS",
    "RETINANET_ANCHOR_ORDER",
    "MMDetConversionError",
    "convert_mmdet_checkpoint",
    "convert_state_dict",
    "detect_detector",
    "map_key",
    "permute_anchor_blocks",
]
