"""A :class:`Matcher` that takes low-quality matches the way mmdetection v2's ``MaxIoUAssigner`` does.

Both libraries label a prediction by its best IoU with any ground truth (negative, ignored or
positive between the thresholds) and then add "low-quality" matches: for each ground truth, the
predictions with its highest IoU (ties included) become positives. They differ in two ways
(mmdet ``core/bbox/assigners/max_iou_assigner.py``, ``assign_wrt_overlaps``; Detectron2
``modeling/matcher.py``, ``set_low_quality_matches_``):

* mmdetection adds a low-quality match only when that highest IoU is at least ``min_pos_iou``
  (0.3 in the RPN, 0.5 in Mask R-CNN's RoI assigner, 0 in RetinaNet); Detectron2 at any IoU;
* mmdetection re-assigns such a prediction to that ground truth (when several claim it, the one
  listed last wins); Detectron2 keeps the prediction's best ground truth and only relabels it.

RoI heads: mmdetection matches the proposals first and then appends the ground-truth boxes, each
assigned to itself (``RandomSampler`` with ``add_gt_as_proposals``, ``AssignResult.add_gt_``);
Detectron2 appends them before matching, so every ground truth's best match would be its own box.
``appended_ground_truth=True`` tells the matcher that the last M predictions are the M ground-truth
boxes, and reproduces mmdetection's order.
"""

import torch

from detectron2.modeling.matcher import Matcher

__all__ = ["MMDetMatcher"]


class MMDetMatcher(Matcher):
    """:class:`Matcher` with mmdetection's minimum IoU and re-assignment for low-quality matches."""

    def __init__(
        self,
        thresholds,
        labels,
        allow_low_quality_matches: bool = False,
        *,
        min_low_quality_iou: float = 0.0,
        appended_ground_truth: bool = False,
    ):
        """
        Args:
            thresholds, labels, allow_low_quality_matches: as in :class:`Matcher`.
            min_low_quality_iou: mmdetection's ``min_pos_iou``: a ground truth adds low-quality
                matches only if its best IoU is at least this value.
            appended_ground_truth: the last M columns of the IoU matrix are the M ground-truth
                boxes appended to the proposals (Detectron2's ``proposal_append_gt``); they are
                matched to themselves and left out of the low-quality search, as in mmdetection.
        """
        super().__init__(thresholds, labels, allow_low_quality_matches)
        self.min_low_quality_iou = min_low_quality_iou
        self.appended_ground_truth = appended_ground_truth

    def __call__(self, match_quality_matrix: torch.Tensor):
        """
        Args:
            match_quality_matrix: M (ground truth) x N (predictions) IoU matrix, values >= 0.

        Returns:
            matches (int64, N): the matched ground-truth index per prediction.
            match_labels (int8, N): the label per prediction (``labels`` values; 1 = positive).
        """
        num_gt, num_pred = match_quality_matrix.shape
        if num_gt == 0 or not (self.allow_low_quality_matches or self.appended_ground_truth):
            return super().__call__(match_quality_matrix)
        assert torch.all(match_quality_matrix >= 0)
        matched_vals, matches = match_quality_matrix.max(dim=0)
        match_labels = matches.new_full(matches.size(), 1, dtype=torch.int8)
        for label, low, high in zip(self.labels, self.thresholds[:-1], self.thresholds[1:]):
            match_labels[(matched_vals >= low) & (matched_vals < high)] = label

        num_proposals = num_pred - num_gt if self.appended_ground_truth else num_pred
        if self.allow_low_quality_matches:
            self._reassign_low_quality_(matches, match_labels, match_quality_matrix[:, :num_proposals])
        if self.appended_ground_truth:
            matches[num_proposals:] = torch.arange(num_gt, device=matches.device)
            match_labels[num_proposals:] = 1
        return matches, match_labels

    def _reassign_low_quality_(self, matches, match_labels, quality):
        """For each ground truth whose best IoU reaches the minimum, claim its best predictions."""
        if quality.numel() == 0:
            return
        best_for_gt = quality.max(dim=1, keepdim=True).values  # M x 1
        claims = (quality == best_for_gt) & (best_for_gt >= self.min_low_quality_iou)  # M x N
        gt_index = torch.arange(quality.shape[0], device=quality.device)[:, None].expand_as(claims)
        last_claimant = torch.where(claims, gt_index, torch.full_like(gt_index, -1)).max(dim=0).values
        claimed = torch.nonzero(last_claimant >= 0).squeeze(1)
        matches[claimed] = last_claimant[claimed]
        match_labels[claimed] = 1
