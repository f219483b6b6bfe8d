# Mask R-CNN R-50-FPN, RSB-A1 backbone, 1x (mmdet: 41.2 box / 38.2 mask AP, 4.5 GB).
# Detectron2's FPN/RPN/RoI head defaults already equal mmdetection v2's
# (docs/mmdet_rsb_settings.md sections 1B, 1C).
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from rsb_backbone import rcnn_fpn

from ..common.rsb_base import _PIXEL, _rsb_trunk, dataloader, lr_multiplier, optimizer, train

model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.backbone = L(rcnn_fpn)(bottom_up=_rsb_trunk, out_channels=256)
model.pixel_mean = _PIXEL["pixel_mean"]
model.pixel_std = _PIXEL["pixel_std"]
model.input_format = _PIXEL["input_format"]
