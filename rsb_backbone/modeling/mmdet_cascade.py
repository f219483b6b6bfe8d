"""Cascade R-CNN RoI heads that behave like mmdetection v2's ``CascadeRoIHead``.

The four differences from Detectron2's :class:`CascadeROIHeads` (test scores, mask heads, stage
losses, re-sampling) and their mmdetection sources: ``docs/mmdet_rsb_settings.md`` section 1D.
"""

from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from detectron2.config import configurable
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads
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
            mask_heads: one mask head per stage (mmdetection), or None for a box-only cascade.
                Replaces ``CascadeROIHeads``' ``mask_head``; needs ``mask_in_features`` and
                ``mask_pooler`` as usual.
            stage_loss_weights: multiplier of each stage's box and mask losses.
            score_averaging: "logits" (mmdetection: softmax of the mean logits) or "probs"
                (Detectron2: mean of the stages' softmax).
            scale_stage_gradients: True scales the RoI features' gradient by 1/num_stages in
                each stage, as Detectron2 does; mmdetection does not.
            resample_each_stage: True (mmdetection) re-samples the RoIs of stages 2.. from the
                previous stage's refined boxes with the sampling of stage 1 (batch size,
                positive fraction, GT boxes added); False only re-matches them (Detectron2).
            kwargs: arguments of :class:`CascadeROIHeads` (``box_heads``, ``box_predictors``,
                ``proposal_matchers``, ``mask_in_features``, ``mask_pooler``, ...).
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
        return proposals, self._forward_train(features, proposals, targets)

    def _forward_train(self, features, proposals, targets) -> Dict[str, torch.Tensor]:
        box_features = [features[f] for f in self.box_in_features]
        image_sizes = [x.image_size for x in proposals]
        losses, prev_pred_boxes = {}, None
        for stage in range(self.num_cascade_stages):
            if stage > 0:
                proposals = self._refined_proposals(proposals, prev_pred_boxes, image_sizes)
            sample = stage == 0 or self.resample_each_stage
            proposals = self._label_stage(proposals, targets, stage, sample=sample)
            predictions = self._run_stage(box_features, proposals, stage)
            with torch.no_grad():
                prev_pred_boxes = self.box_predictor[stage].predict_boxes(predictions, proposals)
            with get_event_storage().name_scope(f"stage{stage}"):
                stage_losses = self.box_predictor[stage].losses(predictions, proposals)
            if self.mask_on:
                stage_losses.update(self._mask_loss(features, proposals, stage))
            weight = self.stage_loss_weights[stage]
            losses.update({f"{k}_stage{stage}": v * weight for k, v in stage_losses.items()})
        return losses

    def _mask_loss(self, features, proposals, stage) -> Dict[str, torch.Tensor]:
        foreground, _ = select_foreground_proposals(proposals, self.num_classes)
        mask_features = [features[f] for f in self.mask_in_features]
        mask_features = self.mask_pooler(mask_features, [x.proposal_boxes for x in foreground])
        return self.mask_head[stage](mask_features, foreground)

    def _refined_proposals(self, proposals, pred_boxes, image_sizes) -> List[Instances]:
        """Next stage's proposals: the refined boxes, clipped, empty ones dropped; when re-sampling,
        without those refined from GT boxes (mmdetection's ``refine_bboxes``: the sampler adds the
        GT boxes again)."""
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
        labelled = []
        num_fg, num_bg = [], []
        for proposals_per_image, targets_per_image, n in zip(proposals, targets, num_given):
            is_gt = (
                torch.arange(len(proposals_per_image), device=proposals_per_image.proposal_boxes.device) >= n
            )
            match_quality = pairwise_iou(targets_per_image.gt_boxes, proposals_per_image.proposal_boxes)
            matched_idxs, matched_labels = self.proposal_matchers[stage](match_quality)
            if sample:
                sampled_idxs, gt_classes = self._sample_proposals(
                    matched_idxs, matched_labels, targets_per_image.gt_classes
                )
            else:
                sampled_idxs = torch.arange(len(proposals_per_image), device=matched_idxs.device)
                if len(targets_per_image) > 0:
                    gt_classes = targets_per_image.gt_classes[matched_idxs]
                else:
                    gt_classes = torch.zeros_like(matched_idxs)
                gt_classes[matched_labels == 0] = self.num_classes
            selected = Instances(proposals_per_image.image_size)
            selected.proposal_boxes = proposals_per_image.proposal_boxes[sampled_idxs]
            selected.proposal_is_gt = is_gt[sampled_idxs]
            selected.gt_classes = gt_classes
            if len(targets_per_image) > 0:
                sampled_targets = matched_idxs[sampled_idxs]
                for name, value in targets_per_image.get_fields().items():
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
        stage_predictions = []
        prev_pred_boxes = None
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
