"""Detections as COCO results (the list that ``pycocotools.coco.COCO.loadRes`` reads)."""

from typing import Dict, List, Optional

from detectron2.data.catalog import Metadata
from detectron2.evaluation.coco_evaluation import instances_to_coco_json
from detectron2.structures import Instances


def contiguous_to_dataset_ids(metadata: Optional[Metadata]) -> Optional[Dict[int, int]]:
    """The model's class index -> the data set's category id, from the
    ``thing_dataset_id_to_contiguous_id`` of ``metadata`` (of COCO-format sets); None if unknown."""
    id_map = getattr(metadata, "thing_dataset_id_to_contiguous_id", None)
    return {contiguous: dataset_id for dataset_id, contiguous in id_map.items()} if id_map else None


def instances_to_coco_results(
    instances: Instances, image_id: int, *, category_ids: Optional[Dict[int, int]] = None
) -> List[dict]:
    """One image's detections as COCO result dicts (Detectron2's ``instances_to_coco_json``).

    Args:
        instances: a predictor's ``outputs["instances"]``, in original image coordinates.
        image_id: the image's id in the COCO file the results will be compared with.
        category_ids: class index -> category id (:func:`contiguous_to_dataset_ids`); None keeps
            the class indices.

    Returns:
        dicts with ``image_id``, ``category_id``, ``bbox`` (XYWH), ``score`` (and RLE ``segmentation``).
    """
    results = instances_to_coco_json(instances.to("cpu"), image_id)
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
