"""Checked COCO registration and fault-tolerant dataset mappers; importing this registers no data set."""

from .coco_registration import (
    load_coco_instances_checked,
    parse_register_coco_arg,
    register_coco_from_arg,
    register_coco_instances_checked,
)
from .mapper import EvaluationDatasetMapper, SkippingDatasetMapper

__all__ = [
    "SkippingDatasetMapper",
    "EvaluationDatasetMapper",
    "load_coco_instances_checked",
    "parse_register_coco_arg",
    "register_coco_from_arg",
    "register_coco_instances_checked",
]
