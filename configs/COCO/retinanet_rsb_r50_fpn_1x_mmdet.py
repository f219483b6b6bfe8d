# RetinaNet R-50-FPN, RSB-A1 backbone, 1x, with mmdetection's test-time box post-processing
# (mmdet: 39.0 box AP): boxes clipped to the image before NMS (MMDetRetinaNet,
# rsb_backbone/modeling/mmdet_retinanet.py). P7 without ReLU is already the base config's.
# Same parameters as the base config: checkpoints load into either.
from rsb_backbone.modeling import MMDetRetinaNet

from .retinanet_rsb_r50_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

model._target_ = MMDetRetinaNet
model.clip_boxes_before_nms = True
