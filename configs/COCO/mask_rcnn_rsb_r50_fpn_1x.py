# Mask R-CNN R-50-FPN, RSB-A1 backbone, 1x (mmdet: 41.2 box / 38.2 mask AP, 4.5 GB).
# Detectron2's common Mask R-CNN with the timm trunk as model.backbone.bottom_up; its FPN/RPN/RoI
# head defaults already equal mmdetection v2's (docs/mmdet_rsb_settings.md sections 1B, 1C).
from detectron2 import model_zoo

from ..common.rsb_base import _PIXEL, _rsb_trunk, dataloader, lr_multiplier, optimizer, train

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.backbone.bottom_up = _rsb_trunk  # the FPN's in_features follow its out_features
# Detectron2's FPN defaults (= mmdetection's), written out so that they can be overridden.
model.backbone.update(norm="", fuse_type="sum", square_pad=0)
model.pixel_mean = _PIXEL["pixel_mean"]
model.pixel_std = _PIXEL["pixel_std"]
model.input_format = _PIXEL["input_format"]
