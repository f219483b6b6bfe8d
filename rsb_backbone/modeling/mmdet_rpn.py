"""An RPN whose training targets and loss normalisation follow mmdetection v2's ``RPNHead``
(the options and their sources: ``docs/mmdet_parity.md``)."""

from typing import List

import torch

from detectron2.config import configurable
from detectron2.modeling import PROPOSAL_GENERATOR_REGISTRY
from detectron2.modeling.proposal_generator import RPN
from detectron2.structures import Boxes, Instances

from .padding_anchors import PaddingAnchorMatching


@PROPOSAL_GENERATOR_REGISTRY.register()
class MMDetRPN(PaddingAnchorMatching, RPN):
    """:class:`RPN` with mmdetection's padding-anchor handling and loss normaliser."""

    @configurable
    def __init__(self, *, normalize_by_sampled_anchors: bool = True, **kwargs):
        """
        Args:
            normalize_by_sampled_anchors: True divides the losses by the sampled anchors
                (mmdetection); False by ``batch_size_per_image`` per image (Detectron2).
            kwargs: arguments of :class:`PaddingAnchorMatching` and :class:`RPN`.
        """
        super().__init__(**kwargs)
        self.normalize_by_sampled_anchors = normalize_by_sampled_anchors

    @torch.jit.unused
    @torch.no_grad()
    def label_and_sample_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        if not self.ignore_padding_anchors:
            return super().label_and_sample_anchors(anchors, gt_instances)
        # mmdet allowed_border >= 0 (the cascade's 0): anchors must also lie inside the image
        matched = [self.match_anchors_on_image(anchors, x, self.anchor_boundary_thresh) for x in gt_instances]
        return [self._subsample_labels(labels) for _, labels, _ in matched], [m[2] for m in matched]

    @torch.jit.unused
    def losses(self, anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        losses = super().losses(anchors, pred_objectness_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        if not self.normalize_by_sampled_anchors:
            return losses
        labels = torch.stack(gt_labels)
        sampled = (labels == 1).sum(dim=1).clamp(min=1) + (labels == 0).sum(dim=1).clamp(min=1)
        rescale = self.batch_size_per_image * len(gt_labels) / sampled.sum().item()
        return {name: value * rescale for name, value in losses.items()}
