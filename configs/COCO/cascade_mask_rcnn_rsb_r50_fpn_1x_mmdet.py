# Cascade Mask R-CNN R-50-FPN, RSB-A1 backbone, 1x, with mmdetection's cascade behaviour
# (mmdet: 44.8 box / 39.9 mask AP). MMDetCascadeROIHeads (rsb_backbone/modeling/mmdet_cascade.py):
# three mask heads, one per stage, averaged at test time; the stages' logits averaged before the
# softmax; box and mask losses weighted 1 / 0.5 / 0.25 without 1/3 gradient scaling; RoIs
# re-sampled at every stage. The config for mmdetection's released checkpoint (converted with
# projects/mmdet_checkpoints/convert_mmdet_checkpoint.py) and for training the mmdetection way.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads import MaskRCNNConvUpsampleHead

from rsb_backbone.modeling import MMDetCascadeROIHeads

from ..common.mmdet_training import use_mmdet_training
from .cascade_mask_rcnn_rsb_r50_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

model.roi_heads.pop("mask_head")
model.roi_heads.update(
    _target_=MMDetCascadeROIHeads,
    # mmdet replicates its one mask_head dict into num_stages heads (cascade_roi_head.py init_mask_head)
    mask_heads=[
        L(MaskRCNNConvUpsampleHead)(
            input_shape=ShapeSpec(channels=256, width=14, height=14),
            num_classes="${...num_classes}",
            conv_dims=[256, 256, 256, 256, 256],  # 4 convs + deconv, as FCNMaskHead
        )
        for _ in range(3)
    ],
    stage_loss_weights=[1.0, 0.5, 0.25],  # mmdet cascade_mask_rcnn_r50_fpn.py
    score_averaging="logits",
    scale_stage_gradients=False,
    resample_each_stage=True,
)

# Training the mmdetection way: OpenMMLab's RSB-A1 weights, RPN matching and normaliser, padding
# anchors, initialisation and small-image filter (configs/common/mmdet_training.py).
use_mmdet_training(model, dataloader, roi_low_quality_matches=False)  # mmdet cascade: no low quality
