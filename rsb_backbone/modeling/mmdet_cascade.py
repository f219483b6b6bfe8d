"""Cascade R-CNN RoI heads that behave like mmdetection v2's ``CascadeRoIHead``.

The four differences from Detectron2's :class:`CascadeROIHeads` (test scores, mask heads, stage
losses, re-sampling) and their mmdetection sources: ``docs/mmdet_rsb_settings.md`` section 1D.
"""

from typing import List, Optional, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads

# Private to Detectron2's cascade_rcnn.py, which has no public form of it: reused so that the
# Detectron2-style option (scale_stage_gradients=True) is exactly Detectron2's CascadeROIHeads.
from detectron2.modeling.roi_heads.cascade_rcnn import _ScaleGradient
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference
from detectron2.modeling.roi_heads.roi_heads import select_foreground_proposals
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import get_event_storage

SCORE_AVERAGING = ("logits", "probs")


@ROI_HEADS_REGISTRY.register()
class MMDetCascadeROIHeads(CascadeROIHeads):
    """:class:`CascadeROIHeads` with mmdetection v2's training and test behaviour.

    Parameter names equal ``CascadeROIHeads``' except the mask heads: ``mask_head.{stage}.*``
    (three heads, like mmdetection's ``roi_head.mask_head.{stage}``).
    """

    @configurable
    def __init__(
        self,
        *,
        mask_heads: Optional[Sequence[nn.Module]] = None,
        stage_loss_weights: Sequence[float] = (1.0, 0.5, 0.25),  # mmdet cascade_mask_rcnn_r50_fpn.py
        score_averaging: str = "logits",
        scale_stage_gradients: bool = False,
        resample_each_stage: bool = True,
        **kwargs,
    ):
        """
        Args:
            mask_heads: one mask head per stage (mmdetection), or None for a box-only cascade;
                replaces ``CascadeROIHeads``' ``mask_head``.
            stage_loss_weights: multiplier of each stage's box and mask losses.
            score_averaging: "logits" (mmdetection: softmax of the mean logits) or "probs"
                (Detectron2: mean of the stages' softmax).
            scale_stage_gradients: True scales the RoI features' gradient by 1/num_stages in
                each stage (Detectron2); mmdetection does not.
            resample_each_stage: True (mmdetection) re-samples the RoIs of stages 2.. from the
                previous stage's refined boxes like stage 1; False only re-matches them (Detectron2).
            kwargs: arguments of :class:`CascadeROIHeads`.
        """
        if kwargs.get("mask_head") is not None:
            raise ValueError(
                "MMDetCascadeROIHeads takes mask_heads=[one head per stage] instead of mask_head="
            )
        num_stages = len(kwargs["box_heads"])
        if mask_heads is not None:
            mask_heads = list(mask_heads)
            if len(mask_heads) != num_stages:
                raise ValueError(
                    f"mask_heads has {len(mask_heads)} heads; expected one per cascade stage ({num_stages})"
                )
            kwargs["mask_head"] = nn.ModuleList(mask_heads)
        elif kwargs.get("mask_in_features") is not None:
            raise ValueError("mask_in_features is set but mask_heads is None")
        if len(stage_loss_weights) != num_stages:
            raise ValueError(
                f"stage_loss_weights={list(stage_loss_weights)}: expected {num_stages} weights, one per stage"
            )
        if score_averaging not in SCORE_AVERAGING:
            raise ValueError(f"score_averaging={score_averaging!r}: expected one of {SCORE_AVERAGING}")
        super().__init__(**kwargs)
        self.stage_loss_weights = tuple(float(w) for w in stage_loss_weights)
        self.score_averaging = score_averaging
        self.scale_stage_gradients = scale_stage_gradients
        self.resample_each_stage = resample_each_stage

    @classmethod
    def from_config(cls, cfg, input_shape):
        # yacs: Detectron2's cascade keys, with mmdetection's behaviour and one mask head per stage.
        ret = super().from_config(cfg, input_shape)
        mask_head = ret.pop("mask_head", None)
        if mask_head is not None:
            ret["mask_heads"] = [mask_head] + [
                cls._init_mask_head(cfg, input_shape)["mask_head"] for _ in range(len(ret["box_heads"]) - 1)
            ]
        return ret

    # ---- training -------------------------------------------------------------------------------

    def forward(self, images, features, proposals, targets=None):
        del images
        if not self.training:
            pred_instances = self._forward_box(features, proposals)
            return self.forward_with_given_boxes(features, pred_instances), {}
        if targets is None:
            raise ValueError("MMDetCascadeROIHeads needs targets in training")
        box_features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        losses, prev_pred_boxes, rois = {}, None, proposals
        for stage in range(self.num_cascade_stages):
            if stage > 0:
                rois = self._refined_proposals(rois, prev_pred_boxes, image_sizes)
            sample = stage == 0 or self.resample_each_stage
            rois = self._label_stage(rois, targets, stage, sample=sample)
            predictions = self._run_stage(box_features, rois, stage)
            with torch.no_grad():
                prev_pred_boxes = self.box_predictor[stage].predict_boxes(predictions, rois)
            with get_event_storage().name_scope(f"stage{stage}"):
                stage_losses = self.box_predictor[stage].losses(predictions, rois)
            if self.mask_on:
                foreground, _ = select_foreground_proposals(rois, self.num_classes)
                mask_features = [features[f] for f in self.mask_in_features]
                mask_features = self.mask_pooler(mask_features, [x.proposal_boxes for x in foreground])
                stage_losses.update(self.mask_head[stage](mask_features, foreground))
            weight = self.stage_loss_weights[stage]
            losses.update({f"{k}_stage{stage}": v * weight for k, v in stage_losses.items()})
        return proposals, losses

    def _refined_proposals(self, proposals, pred_boxes, image_sizes) -> List[Instances]:
        """Next stage's proposals: the refined boxes, clipped, empty ones dropped; when re-sampling, without
        those refined from GT boxes (mmdetection's ``refine_bboxes``: the sampler adds them again)."""
        if self.resample_each_stage:
            pred_boxes = [boxes[~previous.proposal_is_gt] for previous, boxes in zip(proposals, pred_boxes)]
        refined = self._create_proposals_from_boxes(pred_boxes, image_sizes)
        for instances in refined:
            # add_ground_truth_to_proposals reads this field's device; RoI heads do not use it.
            instances.objectness_logits = torch.zeros(len(instances), device=instances.proposal_boxes.device)
        return refined

    @torch.no_grad()
    def _label_stage(self, proposals, targets, stage: int, *, sample: bool) -> List[Instances]:
        """Match ``proposals`` to ``targets`` with this stage's matcher; with ``sample``, add the
        GT boxes and sample like :meth:`label_and_sample_proposals`. Copies every ``gt_*`` field
        (masks included) of the matched targets and marks GT-derived RoIs (``proposal_is_gt``)."""
        num_given = [len(p) for p in proposals]
        if sample and self.proposal_append_gt:
            proposals = add_ground_truth_to_proposals(targets, proposals)
        labelled, num_fg, num_bg = [], [], []
        for props, gts, n in zip(proposals, targets, num_given):
            is_gt = torch.arange(len(props), device=props.proposal_boxes.device) >= n
            iou = pairwise_iou(gts.gt_boxes, props.proposal_boxes)
            matches, match_labels = self.proposal_matchers[stage](iou)
            if sample:
                sampled_idxs, gt_classes = self._sample_proposals(matches, match_labels, gts.gt_classes)
            else:
                sampled_idxs = torch.arange(len(props), device=matches.device)
                gt_classes = gts.gt_classes[matches] if len(gts) > 0 else torch.zeros_like(matches)
                gt_classes[match_labels == 0] = self.num_classes
            selected = Instances(props.image_size)
            selected.proposal_boxes = props.proposal_boxes[sampled_idxs]
            selected.proposal_is_gt = is_gt[sampled_idxs]
            selected.gt_classes = gt_classes
            if len(gts) > 0:
                sampled_targets = matches[sampled_idxs]
                for name, value in gts.get_fields().items():
                    if name.startswith("gt_") and not selected.has(name):
                        selected.set(name, value[sampled_targets])
            else:
                selected.gt_boxes = Boxes(selected.proposal_boxes.tensor.new_zeros((len(selected), 4)))
            num_bg.append((gt_classes == self.num_classes).sum().item())
            num_fg.append(gt_classes.numel() - num_bg[-1])
            labelled.append(selected)
        storage = get_event_storage()
        storage.put_scalar(f"stage{stage}/roi_head/num_fg_samples", sum(num_fg) / max(len(num_fg), 1))
        storage.put_scalar(f"stage{stage}/roi_head/num_bg_samples", sum(num_bg) / max(len(num_bg), 1))
        return labelled

    def _run_stage(self, features, proposals, stage):
        box_features = self.box_pooler(features, [x.proposal_boxes for x in proposals])
        if self.training and self.scale_stage_gradients:
            box_features = _ScaleGradient.apply(box_features, 1.0 / self.num_cascade_stages)
        box_features = self.box_head[stage](box_features)
        return self.box_predictor[stage](box_features)

    # ---- inference ------------------------------------------------------------------------------

    def _forward_box(self, features, proposals, targets=None):
        if self.training:
            raise RuntimeError("MMDetCascadeROIHeads trains through forward(); _forward_box is for inference")
        features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        stage_predictions, prev_pred_boxes = [], None
        for stage in range(self.num_cascade_stages):
            if stage > 0:
                # Not filtered for empty boxes: the stages' scores are averaged box by box.
                proposals = self._create_proposals_from_boxes(prev_pred_boxes, image_sizes)
            predictions = self._run_stage(features, proposals, stage)
            prev_pred_boxes = self.box_predictor[stage].predict_boxes(predictions, proposals)
            stage_predictions.append(predictions)

        last = self.box_predictor[-1]
        if self.score_averaging == "logits":
            mean_logits = sum(p[0] for p in stage_predictions) / self.num_cascade_stages
            scores = last.predict_probs((mean_logits, stage_predictions[-1][1]), proposals)
        else:
            per_stage = [
                self.box_predictor[s].predict_probs(p, proposals) for s, p in enumerate(stage_predictions)
            ]
            scores = [sum(per_image) / self.num_cascade_stages for per_image in zip(*per_stage)]
        boxes = last.predict_boxes(stage_predictions[-1], proposals)
        pred_instances, _ = fast_rcnn_inference(
            boxes, scores, image_sizes, last.test_score_thresh, last.test_nms_thresh, last.test_topk_per_image
        )
        return pred_instances

    def _forward_mask(self, features, instances):
        if not self.mask_on:
            return instances
        if self.training:
            raise RuntimeError("MMDetCascadeROIHeads computes mask losses per stage in forward()")
        mask_features = [features[f] for f in self.mask_in_features]
        mask_features = self.mask_pooler(mask_features, [x.pred_boxes for x in instances])
        # Every stage's head on the final boxes; their sigmoid maps averaged (merge_aug_masks).
        probs = []
        for head in self.mask_head:
            head(mask_features, instances)  # mask_rcnn_inference: sigmoid of each box's class channel
            probs.append([x.pred_masks for x in instances])
        for instances_per_image, per_stage in zip(instances, zip(*probs)):
            instances_per_image.pred_masks = sum(per_stage) / len(self.mask_head)
        return instances
