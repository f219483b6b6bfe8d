# Faster R-CNN R-50-FPN, RSB-A1 backbone, 1x, trained the mmdetection way (mmdet: 40.8 box AP):
# the settings of configs/common/mmdet_training.py. Same parameters as the plain config.
from ..common.mmdet_training import use_mmdet_training
from .faster_rcnn_rsb_r50_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

use_mmdet_training(model, dataloader, roi_low_quality_matches=False)  # mmdet faster_rcnn_r50_fpn.py
