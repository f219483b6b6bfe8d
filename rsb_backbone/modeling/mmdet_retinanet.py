"""RetinaNet whose box post-processing and training targets follow mmdetection v2 (the options and
their sources: ``docs/mmdet_parity.md``; P7 without a ReLU is the backbone's ``RetinaNetP6P7``).
"""

from typing import List

import torch

from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.structures import Boxes, Instances

from .padding_anchors import PaddingAnchorMatching


@META_ARCH_REGISTRY.register()
class MMDetRetinaNet(PaddingAnchorMatching, RetinaNet):
    """:class:`RetinaNet` with mmdetection's test-time clipping and training targets."""

    @configurable
    def __init__(
        self, *, clip_boxes_before_nms: bool = True, normalize_by_batch_positives: bool = True, **kwargs
    ):
        """
        Args:
            clip_boxes_before_nms: True (mmdetection) clips decoded boxes to the image before
                NMS; False is Detectron2's RetinaNet.
            normalize_by_batch_positives: True (mmdetection) divides the losses by this batch's
                positive anchors; False by their moving average (Detectron2).
            kwargs: arguments of :class:`PaddingAnchorMatching` and :class:`RetinaNet`.
        """
        super().__init__(**kwargs)
        self.clip_boxes_before_nms = clip_boxes_before_nms
        self.normalize_by_batch_positives = normalize_by_batch_positives

    @torch.no_grad()
    def label_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]):
        if not self.ignore_padding_anchors:
            return super().label_anchors(anchors, gt_instances)
        gt_labels, matched_gt_boxes = [], []
        for instances in gt_instances:
            matches, match_labels, boxes = self.match_anchors_on_image(anchors, instances)
            matched_gt_boxes.append(boxes)
            no_gt = len(instances) == 0
            labels = torch.full_like(matches, self.num_classes) if no_gt else instances.gt_classes[matches]
            labels[match_labels == 0] = self.num_classes  # background
            labels[match_labels == -1] = -1  # ignored, padding anchors included
            gt_labels.append(labels)
        return gt_labels, matched_gt_boxes

    def losses(self, anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes):
        losses = super().losses(anchors, pred_logits, gt_labels, pred_anchor_deltas, gt_boxes)
        if not self.normalize_by_batch_positives:
            return losses
        positives = [((labels >= 0) & (labels != self.num_classes)).sum().item() for labels in gt_labels]
        normalizer = sum(max(count, 1) for count in positives)
        rescale = self.loss_normalizer / normalizer  # undo the moving average the parent divided by
        return {name: value * rescale for name, value in losses.items()}

    def inference_single_image(self, anchors, box_cls, box_delta, image_size):
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_delta, self.test_score_thresh, self.test_topk_candidates, image_size
        )
        if self.clip_boxes_before_nms:
            pred.pred_boxes.clip(image_size)
        keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh)
        return pred[keep[: self.max_detections_per_image]]
