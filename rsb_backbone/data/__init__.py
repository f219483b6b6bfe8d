"""Data for RSB-Detectron2: checked COCO registration and fault-tolerant dataset mappers.

Importing this package registers no data set (the shapes demo sets belong to ``projects/shapes_demo``).
"""

from .coco_registration import (
    load_coco_instances_checked, parse_register_coco_arg, register_coco_from_arg,
    register_coco_instances_checked,
)
from .mapper import EvaluationDatasetMapper, SkippingDatasetMapper

__all__ = [
    "SkippingDatasetMapper", "EvaluationDatasetMapper", "load_coco_instances_checked",
    "parse_register_coco_arg", "register_coco_from_arg", "register_coco_instances_checked",
]
