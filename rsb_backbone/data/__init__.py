"""Checked COCO registration, fault-tolerant dataset mappers and the builtin data sets: importing
this registers the shapes demo's ``rsb_shapes_train``/``rsb_shapes_val`` (generated on first use),
as importing ``detectron2.data`` registers Detectron2's builtin sets."""

from .coco_registration import (
    check_registered_sets,
    load_coco_instances_checked,
    nothing_to_train_on,
    parse_register_coco_arg,
    register_coco_from_arg,
    register_coco_instances_checked,
)
from .datasets import builtin  # noqa: F401  (registers the shapes demo's data sets)
from .mapper import EvaluationDatasetMapper, SkippingDatasetMapper

__all__ = [
    "SkippingDatasetMapper",
    "EvaluationDatasetMapper",
    "check_registered_sets",
    "load_coco_instances_checked",
    "nothing_to_train_on",
    "parse_register_coco_arg",
    "register_coco_from_arg",
    "register_coco_instances_checked",
]
