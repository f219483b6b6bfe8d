"""Data sets for RSB-Detectron2: the synthetic shapes demo set and checked COCO registration.

Importing this package registers ``rsb_shapes_train`` and ``rsb_shapes_val`` in Detectron2's
catalogs (generated under ``$RSB_DATASETS/shapes`` on first use), as importing
``detectron2.data`` registers Detectron2's builtin data sets.
"""

from .builtin import (
    SHAPES_DATASETS,
    datasets_root,
    register_builtin_datasets,
    register_shapes_dataset,
)
from .coco_registration import (
    load_coco_instances_checked,
    num_classes_of,
    parse_register_coco_arg,
    read_coco_json,
    register_coco_from_arg,
    register_coco_instances_checked,
)
from .mapper import EvaluationDatasetMapper, SkippingDatasetMapper, UnreadableImageError
from .shapes import (
    SHAPES_CATEGORIES,
    ensure_shapes_dataset,
    generate_shapes_dataset,
    shapes_dataset_paths,
)

__all__ = [
    "SHAPES_CATEGORIES",
    "SHAPES_DATASETS",
    "SkippingDatasetMapper",
    "EvaluationDatasetMapper",
    "UnreadableImageError",
    "datasets_root",
    "ensure_shapes_dataset",
    "generate_shapes_dataset",
    "load_coco_instances_checked",
    "num_classes_of",
    "parse_register_coco_arg",
    "read_coco_json",
    "register_builtin_datasets",
    "register_coco_from_arg",
    "register_coco_instances_checked",
    "register_shapes_dataset",
    "shapes_dataset_paths",
]

register_builtin_datasets()
