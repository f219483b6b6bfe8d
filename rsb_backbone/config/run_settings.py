"""What a run fills into a config, in one place for both config systems and for built models: the
device, where the number of classes lives and setting it from the data sets, and the test score
threshold."""

import logging
from typing import List, Optional

import torch
from torch import nn

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog

logger = logging.getLogger(__name__)


def resolve_device(device: str) -> str:
    """The device to use for ``device`` ("auto", "cpu", "cuda" or "cuda:N"): "auto" is "cuda" when a
    GPU is present, else "cpu"; CUDA without a GPU is refused."""
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is available; use device='cpu'")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device


def dataset_names(names) -> List[str]:
    """``dataset.names`` of a LazyConfig loader (a string or a list) as a list."""
    return [names] if isinstance(names, str) else list(names)


def head_config(cfg):
    """The node of a detector config that holds its number of classes: ``MODEL.RETINANET`` or
    ``MODEL.ROI_HEADS`` of a yacs CfgNode (with ``SCORE_THRESH_TEST``), ``model.roi_heads`` or
    ``model`` of a LazyConfig."""
    if isinstance(cfg, CfgNode):
        return cfg.MODEL.RETINANET if cfg.MODEL.META_ARCHITECTURE == "RetinaNet" else cfg.MODEL.ROI_HEADS
    if "roi_heads" in cfg.model and "num_classes" in cfg.model.roi_heads:
        return cfg.model.roi_heads
    if "num_classes" in cfg.model:
        return cfg.model
    raise ValueError("cannot find the model's num_classes (model.roi_heads.num_classes or model.num_classes)")


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


def sync_num_classes(cfg, *, training: bool = False) -> int:
    """Set the model's number of classes from the config's data sets (same classes, same order).

    Args:
        cfg: a LazyConfig (its ``dataloader.test`` data sets, and ``dataloader.train``'s when
            ``training``) or a yacs CfgNode (its ``DATASETS.TEST``, for evaluation).
        training: whether the LazyConfig's training set counts (not for ``--eval-only``).

    Returns:
        the number of classes set.
    """
    if isinstance(cfg, CfgNode):
        names, key = list(cfg.DATASETS.TEST), "NUM_CLASSES"
    else:
        splits = [s for s in (["train", "test"] if training else ["test"]) if s in cfg.dataloader]
        names = [n for s in splits for n in dataset_names(cfg.dataloader[s].dataset.names)]
        key = "num_classes"
    if not names:
        raise ValueError("the config names no data set (dataloader.train/test, or yacs DATASETS.TEST)")
    reference = _thing_classes(names[0])
    for name in names[1:]:
        classes = _thing_classes(name)
        if classes != reference:
            raise ValueError(
                f"class mismatch: dataset {names[0]!r} has {len(reference)} classes "
                f"{reference[:5]}..., dataset {name!r} has {len(classes)} {classes[:5]}..."
            )
    head = head_config(cfg)
    if head[key] != len(reference):
        logger.info("%s = %d (classes of %s)", key, len(reference), names[0])
    head[key] = len(reference)
    return len(reference)


def check_masks_for_mask_models(cfg, *, training: bool = False) -> None:
    """Refuse, before training, a LazyConfig whose model predicts masks and one of whose data sets
    has none: its training needs a mask for every object and its COCO evaluation reads each
    annotation's ``segmentation``. Knows the sets registered with ``--register-coco`` (their
    ``json_has_masks`` metadata); others pass.

    Args:
        cfg: a LazyConfig.
        training: whether its training set counts (not for ``--eval-only``).

    Raises:
        ValueError: naming the data set, its JSON file and the missing field.
    """
    roi_heads = cfg.model.get("roi_heads") or {}
    if roi_heads.get("mask_head") is None and not roi_heads.get("mask_heads"):
        return
    for split in [s for s in (["train", "test"] if training else ["test"]) if s in cfg.dataloader]:
        for name in dataset_names(cfg.dataloader[split].dataset.names):
            meta = MetadataCatalog.get(name)
            if meta.get("json_has_masks") is False:
                raise ValueError(
                    f"{meta.registered_json_file}: no annotation has a 'segmentation' (mask), which the "
                    f"model of this config needs for training and COCO evaluation (data set {name!r} of "
                    f"dataloader.{split}); add masks, or use a box-only config (Faster R-CNN, RetinaNet)"
                )


def set_score_threshold(target, score_threshold: float) -> int:
    """Set the test score threshold of a detector or of a yacs config.

    Args:
        target: a Detectron2 detector (every layer with a ``test_score_thresh``: each cascade
            stage's ``FastRCNNOutputLayers``, ``RetinaNet``) or a yacs CfgNode (its :func:`head_config`).
        score_threshold: in [0, 1].

    Returns:
        how many layers (or config keys) were changed.
    """
    if not 0.0 <= score_threshold <= 1.0:
        raise ValueError(f"score_threshold={score_threshold}: expected a value in [0, 1]")
    if isinstance(target, CfgNode):
        head_config(target).SCORE_THRESH_TEST = float(score_threshold)
        return 1
    layers = [m for m in target.modules() if hasattr(m, "test_score_thresh")]
    if not layers:
        raise ValueError(
            f"{type(target).__name__} has no layer with a test_score_thresh attribute to set "
            f"score_threshold={score_threshold} on"
        )
    for layer in layers:
        layer.test_score_thresh = float(score_threshold)
    return len(layers)


def score_threshold_of(model: nn.Module) -> Optional[float]:
    """The test score threshold shared by all of ``model``'s detection layers; None if they differ."""
    thresholds = {float(m.test_score_thresh) for m in model.modules() if hasattr(m, "test_score_thresh")}
    return thresholds.pop() if len(thresholds) == 1 else None
