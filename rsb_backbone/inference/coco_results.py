"""Detections as COCO results (the list that ``pycocotools.coco.COCO.loadRes`` reads)."""

from typing import Dict, List, Optional

import numpy as np
import pycocotools.mask as mask_util

from detectron2.data.catalog import Metadata
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.layers import paste_masks_in_image
from detectron2.structures import Instances, ROIMasks

MASK_THRESHOLD = 0.5  # Detectron2's detector_postprocess, and mmdetection's mask_thr_binary


def contiguous_to_dataset_ids(metadata: Optional[Metadata]) -> Optional[Dict[int, int]]:
    """The model's class index -> the data set's category id, from the
    ``thing_dataset_id_to_contiguous_id`` of ``metadata`` (of COCO-format sets); None if unknown."""
    id_map = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    return {contiguous: dataset_id for dataset_id, contiguous in id_map.items()} if id_map else None


def instances_to_coco_results(
    instances: Instances, image_id: int, *, category_ids: Optional[Dict[int, int]] = None
) -> List[dict]:
    """One image's detections as COCO result dicts (Detectron2's ``instances_to_coco_json``).

    ``pred_masks`` may be bool image masks, or ``ROIMasks`` (each box's mask probabilities, as
    :class:`~rsb_backbone.export.ExportedDetector` gives them with ``mask_format="roi"``): those
    are pasted and encoded one at a time, so that no image-sized array is held for every detection.

    Args:
        instances: a predictor's ``outputs["instances"]``, in original image coordinates.
        image_id: the image's id in the COCO file the results will be compared with.
        category_ids: class index -> category id (:func:`contiguous_to_dataset_ids`); None keeps
            the class indices.

    Returns:
        dicts with ``image_id``, ``category_id``, ``bbox`` (XYWH), ``score`` (and RLE ``segmentation``).
    """
    instances = instances.to("cpu")  # a copy: removing a field leaves the caller's
    roi_masks = instances.get("pred_masks") if instances.has("pred_masks") else None
    if isinstance(roi_masks, ROIMasks):
        instances.remove("pred_masks")
    results = instances_to_coco_json(instances, image_id)
    if isinstance(roi_masks, ROIMasks):
        boxes = instances.pred_boxes.tensor
        for result, mask_probs, box in zip(results, roi_masks.tensor, boxes):
            result["segmentation"] = _roi_mask_rle(mask_probs, box, instances.image_size)
    if category_ids is not None:
        for result in results:
            index = result["category_id"]
            if index not in category_ids:
                raise ValueError(
                    f"class index {index} has no category id in the metadata (known: "
                    f"{sorted(category_ids)}); the model has more classes than its data set"
                )
            result["category_id"] = category_ids[index]
    return results


def _roi_mask_rle(mask_probs, box, image_size) -> dict:
    """COCO RLE of one (M, M) mask probability map pasted into its box in an image of ``image_size``."""
    mask = paste_masks_in_image(mask_probs[None], box[None], image_size, threshold=MASK_THRESHOLD)[0]
    rle = mask_util.encode(np.asfortranarray(mask.numpy()[:, :, None], dtype=np.uint8))[0]
    rle["counts"] = rle["counts"].decode("utf-8")
    return rle
