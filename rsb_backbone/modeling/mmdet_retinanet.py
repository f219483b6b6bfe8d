"""RetinaNet whose box post-processing and training targets follow mmdetection v2.

mmdetection clips each level's decoded boxes to the image before the class-wise NMS
(``delta2bbox`` with ``max_shape``), Detectron2 after it, so border boxes can suppress each other
differently. The training options and their sources: ``docs/mmdet_parity.md``. P7 without a ReLU
lives in the backbone (:class:`rsb_backbone.RetinaNetP6P7`).
"""

from typing import List, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.layers import batched_nms
from detectron2.modeling import META_ARCH_REGISTRY, RetinaNet
from detectron2.structures import Boxes, Instances

from .padding_anchors import PaddingAnchorMatching

@META_ARCH_REGISTRY.register()
class MMDetRetinaNet(PaddingAnchorMatching, RetinaNet):
    """:class:`RetinaNet` with mmdetection's test-time clipping and training targets."""

    @configurable
    def __init__(self, *, clip_boxes_before_nms: bool = True, normalize_by_batch_positives: bool = True, **kwargs):
        """
        Args:
            clip_boxes_before_nms: True (mmdetection) clips decoded boxes to the image before
                NMS; False is Detectron2's RetinaNet.
            normalize_by_batch_positives: True (mmdetection) divides the losses by this batch's
                positive anchors; False by their moving average (Detectron2).
            kwargs: ``ignore_padding_anchors`` (True: anchors on the batch padding are left out of
                training; False: negatives, as in Detectron2) and ``size_divisibility``
                (:class:`PaddingAnchorMatching`), and the arguments of :class:`RetinaNet`.
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
            if len(instances) > 0:
                labels = instances.gt_classes[matches]
            else:
                labels = torch.full_like(matches, self.num_classes)
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

    def inference_single_image(
        self,
        anchors: List[Boxes],
        box_cls: List[Tensor],
        box_delta: List[Tensor],
        image_size: Tuple[int, int],
    ):
        pred = self._decode_multi_level_predictions(
            anchors, box_cls, box_delta, self.test_score_thresh, self.test_topk_candidates, image_size
        )
        if self.clip_boxes_before_nms:
            pred.pred_boxes.clip(image_size)
        keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh)
        return pred[keep[: self.max_detections_per_image]]
