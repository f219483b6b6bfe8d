"""An RPN whose training targets and loss normalisation follow mmdetection v2's ``RPNHead``.

Two training-time differences from Detectron2's :class:`RPN`, each an argument:

* ``ignore_padding_anchors``: anchors on the batch padding are left out of matching, sampling and
  the losses (:mod:`.padding_anchors`; mmdet ``AnchorHead._get_targets_single``).
* ``normalize_by_sampled_anchors``: both losses are divided by the number of anchors actually
  sampled, each image counting at least one positive and one negative (mmdet
  ``AnchorHead.get_targets``: ``num_total_pos + num_total_neg``, ``sampling=True``); Detectron2
  divides by ``batch_size_per_image x images`` (256 per image) even when fewer were sampled.

mmdetection's minimum IoU for low-quality matches is the matcher's job
(:class:`~.mmdet_matcher.MMDetMatcher`, ``min_low_quality_iou=0.3``).
"""

from typing import List

import torch

from detectron2.config import configurable
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator import RPN
from detectron2.structures import Boxes, Instances, pairwise_iou

from .padding_anchors import anchors_on_image

__all__ = ["MMDetRPN", "match_valid_anchors"]


def match_valid_anchors(matcher, gt_boxes: Boxes, anchors: Boxes, valid: torch.Tensor):
    """Match ``gt_boxes`` to the ``valid`` anchors only; the others get label -1 (ignored).

    Args:
        matcher: a :class:`Matcher`.
        gt_boxes: the ground truth of one image.
        anchors: all anchors (levels concatenated).
        valid: bool mask over ``anchors``.

    Returns:
        matches (int64) and labels (int8) over all anchors, as the matcher returns them.
    """
    matches = torch.zeros(len(anchors), dtype=torch.int64, device=anchors.device)
    labels = torch.full((len(anchors),), -1, dtype=torch.int8, device=anchors.device)
    valid_matches, valid_labels = matcher(pairwise_iou(gt_boxes, anchors[valid]))
    matches[valid] = valid_matches.to(matches.device)
    labels[valid] = valid_labels.to(labels.device)
    return matches, labels


@PROPOSAL_GENERATOR_REGISTRY.register()
class MMDetRPN(RPN):
    """:class:`RPN` with mmdetection's padding-anchor handling and loss normaliser (module docstring)."""

    @configurable
    def __init__(
        self,
        *,
        ignore_padding_anchors: bool = True,
        normalize_by_sampled_anchors: bool = True,
        size_divisibility: int = 32,
        **kwargs,
    ):
        """
        Args:
            ignore_padding_anchors: True leaves anchors on the batch padding out (mmdetection).
            normalize_by_sampled_anchors: True divides the losses by the sampled anchors
                (mmdetection); False by ``batch_size_per_image`` per image (Detectron2).
            size_divisibility: each image's own padding in mmdetection (``Pad(size_divisor=32)``).
            kwargs: arguments of :class:`RPN`.
        """
        super().__init__(**kwargs)
        self.ignore_padding_anchors = ignore_padding_anchors
        self.normalize_by_sampled_anchors = normalize_by_sampled_anchors
        self.size_divisibility = size_divisibility

    @torch.jit.unused
    @torch.no_grad()
    def label_and_sample_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        if not self.ignore_padding_anchors:
            return super().label_and_sample_anchors(anchors, gt_instances)
        generator = self.anchor_generator
        all_anchors = Boxes.cat(anchors)
        gt_labels, matched_gt_boxes = [], []
        for instances in gt_instances:
            valid = anchors_on_image(
                anchors, generator.strides, generator.offset, instances.image_size, self.size_divisibility
            )
            if self.anchor_boundary_thresh >= 0:  # mmdet allowed_border >= 0: also inside the image
                valid &= all_anchors.inside_box(instances.image_size, self.anchor_boundary_thresh)
            matches, labels = match_valid_anchors(self.anchor_matcher, instances.gt_boxes, all_anchors, valid)
            gt_labels.append(self._subsample_labels(labels.to(instances.gt_boxes.device)))
            if len(instances) == 0:
                matched_gt_boxes.append(torch.zeros_like(all_anchors.tensor))
            else:
                matched_gt_boxes.append(instances.gt_boxes.tensor[matches])
        return gt_labels, matched_gt_boxes

    @torch.jit.unused
    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        losses = super().losses(anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        if not self.normalize_by_sampled_anchors:
            return losses
        labels = torch.stack(gt_labels)
        sampled = (labels == 1).sum(dim=1).clamp(min=1) + (labels == 0).sum(dim=1).clamp(min=1)
        rescale = self.batch_size_per_image * len(gt_labels) / sampled.sum().item()
        return {name: value * rescale for name, value in losses.items()}
