"""The builtin data sets ``rsb_shapes_train`` and ``rsb_shapes_val`` (the shapes demo), registered
when ``rsb_backbone.data`` is imported, as ``detectron2.data.datasets.builtin`` registers
Detectron2's.

The data sets live in ``$RSB_DATASETS/shapes`` (``RSB_DATASETS`` defaults to ``datasets``,
relative to the working directory at import). Registering writes nothing: the first
``DatasetCatalog.get`` of either name generates the set if it is missing (see
:func:`.shapes.ensure_shapes_dataset`). Their ``json_file`` metadata names the file that this
first load writes, so a ``COCOEvaluator`` built after the test loader, as Detectron2's trainers
build it, finds it.
"""

import logging
import os
from typing import Any, Dict, List, Optional

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..coco_registration import load_coco_instances_checked
from .shapes import SHAPES_CATEGORIES, ensure_shapes_dataset, shapes_dataset_paths

logger = logging.getLogger(__name__)

__all__ = [
    "SHAPES_DATASETS",
    "datasets_root",
    "register_shapes_dataset",
    "register_shapes_demo_datasets",
]

# Registered name -> split of the shapes data set.
SHAPES_DATASETS = {"rsb_shapes_train": "train", "rsb_shapes_val": "val"}
DATASETS_ENV_VAR = "RSB_DATASETS"


def datasets_root() -> str:
    """The folder holding the project's data sets: ``$RSB_DATASETS``, else ``./datasets``."""
    return os.path.abspath(os.path.expanduser(os.getenv(DATASETS_ENV_VAR, "datasets")))


def _load_shapes_split(root: str, split: str, generate_kwargs: Dict[str, Any]) -> List[dict]:
    paths = ensure_shapes_dataset(root, **generate_kwargs)[split]
    return load_coco_instances_checked(paths["json_file"], paths["image_root"])


def register_shapes_dataset(name: str, split: str, *, root: str, **generate_kwargs) -> None:
    """Register one split of the shapes data set under ``root``, generated on first load.

    Registering the same name again with the same root does nothing.

    Args:
        name: data set name for ``cfg.DATASETS.TRAIN``/``TEST`` or ``dataset.names``.
        split: ``"train"`` or ``"val"``.
        root: folder of the shapes data set (``train.json``, ``val.json``, ``train/``, ``val/``).
        **generate_kwargs: passed to :func:`shapes_generator.generate_shapes_dataset` if the set
            has to be generated (sizes, counts, seed).

    Raises:
        ValueError: unknown split, or ``name`` already registered for another folder.
    """
    root = os.path.abspath(os.fspath(root))
    paths = shapes_dataset_paths(root)
    if split not in paths:
        raise ValueError(f"split={split!r}: expected one of {sorted(paths)}")
    json_file, image_root = paths[split]["json_file"], paths[split]["image_root"]
    if name in DatasetCatalog.list():
        registered = getattr(MetadataCatalog.get(name), "json_file", None)
        if registered == json_file:
            return
        raise ValueError(
            f"data set name {name!r} is already registered with json_file={registered!r}; "
            f"cannot register it again for {json_file}"
        )
    DatasetCatalog.register(name, lambda: _load_shapes_split(root, split, generate_kwargs))
    categories = sorted(SHAPES_CATEGORIES, key=lambda c: c["id"])
    MetadataCatalog.get(name).set(
        thing_classes=[c["name"] for c in categories],
        thing_dataset_id_to_contiguous_id={c["id"]: i for i, c in enumerate(categories)},
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )


def register_shapes_demo_datasets(root: Optional[str] = None) -> None:
    """Register ``rsb_shapes_train`` and ``rsb_shapes_val``; calling it again does nothing.

    Args:
        root: folder holding the project's data sets; None for :func:`datasets_root`. The
            shapes set lives in its ``shapes`` subfolder.
    """
    shapes_root = os.path.join(datasets_root() if root is None else os.path.abspath(root), "shapes")
    for name, split in SHAPES_DATASETS.items():
        register_shapes_dataset(name, split, root=shapes_root)


register_shapes_demo_datasets()
