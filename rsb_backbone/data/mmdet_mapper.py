"""The training mapper of the ``_mmdet`` configs: annotations prepared as mmdetection v2's
``CocoDataset`` and ``LoadAnnotations`` prepare them, where Detectron2's ``DatasetMapper`` differs.

- mmdetection leaves out an annotation whose box has a side under 1 px, whose ``area`` is not
  positive or whose box lies outside the image (``CocoDataset._parse_ann_info``); Detectron2 keeps
  it unless the resized box is empty. mmdetection turns (x, y, w, h) into corners in float64 and
  then stores float32; Detectron2's ``BoxMode.convert`` adds in float32 (boxes one float32 step
  apart).
- mmdetection rasterizes polygons at the image's original size (``LoadAnnotations(poly2mask=True)``)
  and resizes the bitmap with the image (nearest neighbour); Detectron2 scales the polygon and
  rasterizes it afterwards (per RoI at 28x28 in the mask head for ``instance_mask_format="polygon"``,
  at the resized size for ``"bitmask"``).

Measured: docs/mmdet_parity.md, "Training".
"""

from typing import Any, Dict, List

from pycocotools import mask as mask_util

from detectron2.structures import BoxMode

from .mapper import SkippingDatasetMapper


def keeps_annotation_as_mmdet(annotation: Dict[str, Any], height: int, width: int) -> bool:
    """Whether mmdetection's ``CocoDataset._parse_ann_info`` keeps an annotation (crowd or not).

    Args:
        annotation: a Detectron2 annotation dict with ``bbox`` in XYWH_ABS (as loaded from COCO
            JSON) and optionally ``area``.
        height: the image's height.
        width: the image's width.
    """
    x, y, w, h = annotation["bbox"]
    overlap_w = max(0, min(x + w, width) - max(x, 0))
    overlap_h = max(0, min(y + h, height) - max(y, 0))
    if overlap_w * overlap_h == 0:
        return False
    return annotation.get("area", w * h) > 0 and w >= 1 and h >= 1


def polygons_to_rle(polygons: List[List[float]], height: int, width: int) -> Dict[str, Any]:
    """One COCO RLE of the union of ``polygons`` on a ``height`` x ``width`` image, as
    mmdetection's ``LoadAnnotations._poly2mask`` makes it (pycocotools ``frPyObjects`` + ``merge``).

    Args:
        polygons: the annotation's polygons, each a flat list x0, y0, x1, y1, ...
        height: the image's height.
        width: the image's width.
    """
    return mask_util.merge(mask_util.frPyObjects([list(map(float, p)) for p in polygons], height, width))


class MMDetDatasetMapper(SkippingDatasetMapper):
    """:class:`SkippingDatasetMapper` (same arguments) with mmdetection's annotation handling.

    Args:
        annotations_as_mmdet: leave out the annotations mmdetection's ``CocoDataset`` leaves out
            (:func:`keeps_annotation_as_mmdet`) and turn (x, y, w, h) boxes into corners in float64
            as it does.
        rasterize_polygons_at_original_size: turn polygons into bitmaps at the image's original
            size, before the augmentations, which then resize and flip the bitmaps; needs
            ``instance_mask_format="bitmask"`` when ``use_instance_mask`` is True.
        args, kwargs: Detectron2's ``DatasetMapper`` arguments.
    """

    def __init__(
        self,
        *args,
        annotations_as_mmdet: bool = True,
        rasterize_polygons_at_original_size: bool = True,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if (
            rasterize_polygons_at_original_size
            and self.use_instance_mask
            and self.instance_mask_format != "bitmask"
        ):
            raise ValueError(
                "MMDetDatasetMapper: rasterize_polygons_at_original_size=True needs "
                f"instance_mask_format='bitmask', got {self.instance_mask_format!r}"
            )
        self.annotations_as_mmdet = annotations_as_mmdet
        self.rasterize_polygons_at_original_size = rasterize_polygons_at_original_size

    def _transform_annotations(self, dataset_dict: Dict[str, Any], transforms, image_shape) -> None:
        # A private method of Detectron2's DatasetMapper (its __call__ calls it with the annotations
        # before any transform, and no public hook sees them there); overridden to change the
        # annotations first, then handed back to it unchanged.
        # check_image_size has set (or checked) height and width: the original image's size
        height, width = dataset_dict["height"], dataset_dict["width"]
        annotations = dataset_dict["annotations"]
        if self.annotations_as_mmdet:
            annotations = [a for a in annotations if keeps_annotation_as_mmdet(a, height, width)]
            for annotation in annotations:
                if annotation["bbox_mode"] == BoxMode.XYWH_ABS:
                    x, y, w, h = (float(v) for v in annotation["bbox"])
                    annotation["bbox"], annotation["bbox_mode"] = [x, y, x + w, y + h], BoxMode.XYXY_ABS
        if self.rasterize_polygons_at_original_size and self.use_instance_mask:
            for annotation in annotations:
                if isinstance(annotation.get("segmentation"), list):
                    annotation["segmentation"] = polygons_to_rle(annotation["segmentation"], height, width)
        dataset_dict["annotations"] = annotations
        super()._transform_annotations(dataset_dict, transforms, image_shape)
