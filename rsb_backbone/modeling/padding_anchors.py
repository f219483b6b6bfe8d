"""Which anchors lie on an image rather than on the batch padding, as mmdetection v2 decides it
(its sources: ``docs/mmdet_parity.md``); Detectron2 uses every anchor of the padded batch.
"""

import math
from typing import List, Sequence, Tuple

import torch

from detectron2.structures import Boxes, Instances, pairwise_iou


def anchors_on_image(
    anchors: List[Boxes],
    strides: Sequence[int],
    offset: float,
    image_size: Tuple[int, int],
    size_divisibility: int = 32,
) -> torch.Tensor:
    """mmdetection's valid anchors of one image (``AnchorGenerator.valid_flags``).

    Args:
        anchors: the anchors of each level, as Detectron2's anchor generators return them.
        strides: the stride of each level.
        offset: the anchor generator's ``offset`` (anchor centers at ``(i + offset) * stride``).
        image_size: (height, width) of the image before any padding.
        size_divisibility: mmdetection's ``Pad(size_divisor=...)`` of each image.

    Returns:
        A bool tensor over the anchors of all levels (concatenated).
    """
    height, width = image_size
    if size_divisibility > 1:
        height = math.ceil(height / size_divisibility) * size_divisibility
        width = math.ceil(width / size_divisibility) * size_divisibility
    masks = []
    for boxes, stride in zip(anchors, strides):
        grid = torch.round(boxes.get_centers() / stride - offset)  # (column, row) of each anchor
        masks.append((grid[:, 0] < math.ceil(width / stride)) & (grid[:, 1] < math.ceil(height / stride)))
    return torch.cat(masks)


class PaddingAnchorMatching:
    """Mixin for Detectron2's anchor heads (``anchor_generator`` and ``anchor_matcher`` attributes):
    each image's ground truth is matched to the anchors on that image only.

    Args (keyword, consumed before the head's own arguments):
        ignore_padding_anchors: True leaves anchors on the batch padding out of matching and the
            losses (mmdetection); False keeps the head's Detectron2 behaviour.
        size_divisibility: each image's own padding in mmdetection.
    """

    def __init__(self, *, ignore_padding_anchors: bool = True, size_divisibility: int = 32, **kwargs):
        super().__init__(**kwargs)
        self.ignore_padding_anchors = ignore_padding_anchors
        self.size_divisibility = size_divisibility

    def match_anchors_on_image(
        self, anchors: List[Boxes], instances: Instances, boundary_threshold: float = -1.0
    ):
        """
        Args:
            anchors: the anchors of each level.
            instances: one image's ground truth (``gt_boxes``, ``image_size``).
            boundary_threshold: >= 0 also leaves out anchors crossing the image border by more
                than this many pixels (mmdetection's ``allowed_border``).

        Returns:
            matches (int64), labels (int8; -1: left out), matched ground-truth boxes (R x 4).
        """
        all_anchors = Boxes.cat(anchors)
        generator = self.anchor_generator
        valid = anchors_on_image(
            anchors, generator.strides, generator.offset, instances.image_size, self.size_divisibility
        )
        if boundary_threshold >= 0:
            valid &= all_anchors.inside_box(instances.image_size, boundary_threshold)
        matches = torch.zeros(len(all_anchors), dtype=torch.int64, device=all_anchors.device)
        labels = torch.full((len(all_anchors),), -1, dtype=torch.int8, device=all_anchors.device)
        valid_matches, valid_labels = self.anchor_matcher(
            pairwise_iou(instances.gt_boxes, all_anchors[valid])
        )
        matches[valid] = valid_matches.to(matches.device)
        labels[valid] = valid_labels.to(labels.device)
        if len(instances) == 0:
            return matches, labels, torch.zeros_like(all_anchors.tensor)
        return matches, labels, instances.gt_boxes.tensor[matches]
