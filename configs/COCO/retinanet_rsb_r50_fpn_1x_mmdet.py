# RetinaNet R-50-FPN, RSB-A1 backbone, 1x, the mmdetection way (mmdet: 39.0 box AP).
# Test time: boxes clipped to the image before NMS (MMDetRetinaNet,
# rsb_backbone/modeling/mmdet_retinanet.py); P7 without ReLU is already the base config's.
# Training: OpenMMLab's RSB-A1 weights, mmdetection's anchor matching, padding anchors ignored,
# losses divided by the batch's positive anchors, initialisation and small-image filter
# (configs/common/mmdet_training.py). Same parameters as the base config: checkpoints load into
# either.
from ..common.mmdet_training import use_mmdet_training
from .retinanet_rsb_r50_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

use_mmdet_training(model, dataloader)
model.clip_boxes_before_nms = True
