"""Checks and completions applied to a loaded LazyConfig before anything is built."""

import logging
from typing import List

import torch

from detectron2.data import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)

__all__ = ["resolve_device", "dataset_names", "sync_num_classes"]


def resolve_device(cfg) -> str:
    """Turn ``train.device="auto"`` into "cuda" when a GPU is present, else "cpu"; check others."""
    device = cfg.train.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"train.device={device!r} but no CUDA GPU is available; use train.device=cpu")
    cfg.train.device = device
    return device


def dataset_names(names) -> List[str]:
    """``dataset.names`` of a LazyConfig loader (a string or a list) as a list."""
    return [names] if isinstance(names, str) else list(names)


def _thing_classes(name: str) -> List[str]:
    if name not in DatasetCatalog.list():
        raise ValueError(
            f"dataset {name!r} is not registered; register it with --register-coco {name}=JSON:IMAGE_DIR"
        )
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    if classes is None:
        DatasetCatalog.get(name)  # COCO loaders fill the metadata while loading
        classes = MetadataCatalog.get(name).get("thing_classes", None)
    if classes is None:
        raise ValueError(
            f"dataset {name!r} declares no thing_classes, so the number of classes is unknown; "
            f"set MetadataCatalog.get({name!r}).thing_classes"
        )
    return list(classes)


def _model_num_classes_keys(model_cfg) -> List[str]:
    if "roi_heads" in model_cfg and "num_classes" in model_cfg.roi_heads:
        return ["roi_heads.num_classes"]
    if "num_classes" in model_cfg:
        return ["num_classes"]
    return []


def sync_num_classes(cfg, *, training: bool) -> int:
    """Set the model's number of classes from the training data set(s).

    The training and test data sets must declare the same classes, in the same order.

    Args:
        cfg: a LazyConfig with ``dataloader.train``/``dataloader.test`` and ``model``.
        training: whether the training set is used (for ``--eval-only`` the test set decides).

    Returns:
        the number of classes set.
    """
    loaders = ["train", "test"] if training else ["test"]
    reference = None
    for split in loaders:
        if split not in cfg.dataloader:
            continue
        for name in dataset_names(cfg.dataloader[split].dataset.names):
            classes = _thing_classes(name)
            if reference is None:
                reference = (name, classes)
            elif classes != reference[1]:
                raise ValueError(
                    f"class mismatch: dataset {reference[0]!r} has {len(reference[1])} classes "
                    f"{reference[1][:5]}..., dataset {name!r} has {len(classes)} {classes[:5]}..."
                )
    if reference is None:
        raise ValueError("the config has no dataloader.train or dataloader.test data set")
    num_classes = len(reference[1])
    keys = _model_num_classes_keys(cfg.model)
    if not keys:
        raise ValueError("cannot find the model's num_classes (model.roi_heads.num_classes or model.num_classes)")
    for key in keys:
        node = cfg.model
        *parents, leaf = key.split(".")
        for p in parents:
            node = node[p]
        if node[leaf] != num_classes:
            logger.info("model.%s = %d (classes of %s)", key, num_classes, reference[0])
        node[leaf] = num_classes
    return num_classes
