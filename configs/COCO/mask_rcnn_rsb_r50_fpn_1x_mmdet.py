# Mask R-CNN R-50-FPN, RSB-A1 backbone, 1x, trained the mmdetection way (mmdet: 41.2 box / 38.2
# mask AP): OpenMMLab's RSB-A1 ResNet-50, mmdetection's anchor and RoI matching, RPN loss
# normaliser, padding anchors ignored, layer initialisation and small-image filter
# (configs/common/mmdet_training.py). Same parameters as the plain config: checkpoints load into
# either.
from ..common.mmdet_training import use_mmdet_training
from .mask_rcnn_rsb_r50_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

use_mmdet_training(model, dataloader, roi_low_quality_matches=True)  # mmdet mask_rcnn_r50_fpn.py
