"""A :class:`Matcher` that takes low-quality matches the way mmdetection v2's ``MaxIoUAssigner`` does
(sources: ``docs/mmdet_parity.md``)."""

import torch

from detectron2.modeling.matcher import Matcher


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
        """As :meth:`Matcher.__call__`: an M (ground truth) x N IoU matrix -> (matches, match_labels)."""
        num_gt, num_pred = match_quality_matrix.shape
        matches, match_labels = super().__call__(match_quality_matrix)  # thresholds only (see below)
        if num_gt == 0:
            return matches, match_labels
        num_proposals = num_pred - num_gt if self.appended_ground_truth else num_pred
        if self.allow_low_quality_matches and num_proposals > 0:
            # Each ground truth whose best IoU reaches the minimum claims its best predictions.
            quality = match_quality_matrix[:, :num_proposals]
            best_for_gt = quality.max(dim=1, keepdim=True).values  # M x 1
            claims = (quality == best_for_gt) & (best_for_gt >= self.min_low_quality_iou)  # M x N
            gt_index = torch.arange(num_gt, device=quality.device)[:, None].expand_as(claims)
            last_claimant = torch.where(claims, gt_index, torch.full_like(gt_index, -1)).max(dim=0).values
            claimed = torch.nonzero(last_claimant >= 0).squeeze(1)
            matches[claimed] = last_claimant[claimed]
            match_labels[claimed] = 1
        if self.appended_ground_truth:
            matches[num_proposals:] = torch.arange(num_gt, device=matches.device)
            match_labels[num_proposals:] = 1
        return matches, match_labels

    def set_low_quality_matches_(self, match_labels, match_quality_matrix):
        """Does nothing: mmdetection's low-quality matches also change ``matches`` (see __call__)."""
