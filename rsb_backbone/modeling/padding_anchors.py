"""Which anchors lie on an image rather than on the batch padding, as mmdetection v2 decides it.

mmdetection pads each image to a multiple of 32 (its ``pad_shape``) and then pads the batch to
its largest image. Its anchor heads flag an anchor valid when its grid position lies inside
``ceil(pad_shape / stride)`` (``AnchorGenerator.valid_flags``) and leave invalid anchors out of
the assignment, the sampling and the losses (``AnchorHead._get_targets_single``). Detectron2 uses
every anchor of the padded batch. :func:`anchors_on_image` gives mmdetection's mask for one image.
"""

import math
from typing import List, Sequence, Tuple

import torch

from detectron2.structures import Boxes

__all__ = ["anchors_on_image"]


def anchors_on_image(
    anchors: List[Boxes],
    strides: Sequence[int],
    offset: float,
    image_size: Tuple[int, int],
    size_divisibility: int = 32,
) -> torch.Tensor:
    """
    Args:
        anchors: the anchors of each level, as Detectron2's anchor generators return them.
        strides: the stride of each level.
        offset: the anchor generator's ``offset`` (anchor centers at ``(i + offset) * stride``).
        image_size: (height, width) of the image before any padding.
        size_divisibility: mmdetection's ``Pad(size_divisor=...)`` of each image.

    Returns:
        A bool tensor over the anchors of all levels (concatenated): True where the anchor's grid
        position lies inside the image padded to ``size_divisibility``.
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
