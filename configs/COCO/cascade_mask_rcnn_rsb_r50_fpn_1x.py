# Cascade Mask R-CNN R-50-FPN, RSB-A1 backbone, 1x (mmdet: 44.8 box / 39.9 mask AP, 6.2 GB).
# Settings: docs/mmdet_rsb_settings.md section 1D. Detectron2's CascadeROIHeads cannot express
# three of mmdetection's behaviours (see README "Differences from mmdetection"): per-stage
# re-sampling of RoIs, stage loss weights 1/0.5/0.25 without gradient scaling, and three mask
# heads averaged at test time
# (cascade_mask_rcnn_rsb_r50_fpn_1x_mmdet.py reproduces them with MMDetCascadeROIHeads).
from detectron2 import model_zoo

from .mask_rcnn_rsb_r50_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads = model_zoo.get_config("common/models/cascade_rcnn.py").model.roi_heads
# mmdet cascade RPN: SmoothL1 beta 1/9, anchors crossing the border ignored, 2000 train proposals.
model.proposal_generator.smooth_l1_beta = 1.0 / 9
model.proposal_generator.anchor_boundary_thresh = 0
model.proposal_generator.post_nms_topk = (2000, 1000)
# mmdet stage stds (0.1, 0.2), (0.05, 0.1), (0.033, 0.067): weights are their inverses.
for _predictor, (_w_xy, _w_wh) in zip(
    model.roi_heads.box_predictors, [(10.0, 5.0), (20.0, 10.0), (1 / 0.033, 1 / 0.067)]
):
    _predictor.box2box_transform.weights = (_w_xy, _w_xy, _w_wh, _w_wh)
    _predictor.smooth_l1_beta = 1.0  # mmdet cascade RoI box loss: SmoothL1 beta 1.0
