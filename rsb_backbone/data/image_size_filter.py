"""Drop training images with a side under ``min_size`` as mmdetection v2 does (docs/mmdet_rsb_settings.md),
switched on by a LazyConfig's ``dataloader.train.dataset._target_``; Detectron2 has no such filter.
"""

import logging
from typing import Dict, List

from detectron2.data import get_detection_dataset_dicts

logger = logging.getLogger(__name__)


def drop_small_images(dataset_dicts: List[Dict], min_size: int = 32) -> List[Dict]:
    """
    Args:
        dataset_dicts: Detectron2 dataset dicts with ``width`` and ``height``.
        min_size: the smallest side an image may have.

    Returns:
        The dicts whose shorter side is at least ``min_size``, in their order.
    """
    kept = [d for d in dataset_dicts if min(d["width"], d["height"]) >= min_size]
    if len(kept) < len(dataset_dicts):
        msg = "Removed %d images with a side under %d px; %d images left."
        logger.info(msg, len(dataset_dicts) - len(kept), min_size, len(kept))
    return kept


def get_detection_dataset_dicts_min_size(
    names, *, min_size: int = 32, keep_crowd_only_images: bool = False, **kwargs
) -> List[Dict]:
    """Detectron2's ``get_detection_dataset_dicts`` followed by :func:`drop_small_images`.

    Args:
        names: registered data set name(s).
        min_size: the smallest side a training image may have (mmdetection: 32).
        keep_crowd_only_images: keep every image with at least one annotation, crowd annotations
            included, as mmdetection's ``CocoDataset._filter_imgs`` does (it trains on such an
            image as one without objects); Detectron2's ``filter_empty`` drops images without a
            non-crowd annotation. Replaces ``filter_empty``.
        kwargs: the other arguments of ``get_detection_dataset_dicts`` (``filter_empty``, ...).
    """
    if not keep_crowd_only_images:
        return drop_small_images(get_detection_dataset_dicts(names, **kwargs), min_size)
    kwargs["filter_empty"] = False
    dicts = get_detection_dataset_dicts(names, **kwargs)
    annotated = [d for d in dicts if d.get("annotations")]
    if len(annotated) < len(dicts):
        logger.info(
            "Removed %d images without annotations; %d images left.",
            len(dicts) - len(annotated),
            len(annotated),
        )
    return drop_small_images(annotated, min_size)
