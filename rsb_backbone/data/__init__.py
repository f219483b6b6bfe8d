"""Data for RSB-Detectron2: checked COCO registration and fault-tolerant dataset mappers.

Importing this package registers no data set. The synthetic shapes demo set and its names
``rsb_shapes_train``/``rsb_shapes_val`` belong to ``projects/shapes_demo``.
"""

from .coco_registration import (
    load_coco_instances_checked,
    parse_register_coco_arg,
    register_coco_from_arg,
    register_coco_instances_checked,
)
from .mapper import EvaluationDatasetMapper, SkippingDatasetMapper, UnreadableImageError

__all__ = [
    "SkippingDatasetMapper",
    "EvaluationDatasetMapper",
    "UnreadableImageError",
    "load_coco_instances_checked",
    "parse_register_coco_arg",
    "register_coco_from_arg",
    "register_coco_instances_checked",
]
