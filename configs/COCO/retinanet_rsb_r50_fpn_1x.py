# RetinaNet R-50-FPN, RSB-A1 backbone, 1x (mmdet: 39.0 box AP, 3.8 GB).
# Settings: docs/mmdet_rsb_settings.md section 1E.
# Detectron2's common RetinaNet with the timm trunk as model.backbone.bottom_up; P3-P7 with P6
# from C5 and, like mmdetection, no ReLU between P6 and P7.
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from rsb_backbone import RetinaNetP6P7, stage_channels

from ..common.rsb_base import _PIXEL, _rsb_trunk, dataloader, lr_multiplier, optimizer, train

model = model_zoo.get_config("common/models/retinanet.py").model
_rsb_trunk.out_features = ["res3", "res4", "res5"]
model.backbone.bottom_up = _rsb_trunk
model.backbone.in_features = "${.bottom_up.out_features}"
# Detectron2's FPN defaults (= mmdetection's), written out so that they can be overridden.
model.backbone.update(norm="", fuse_type="sum", square_pad=0)
model.backbone.top_block = L(RetinaNetP6P7)(
    # C5's width follows the trunk (2048 for resnet50, 512 for resnet18)
    in_channels=L(stage_channels)(model_name="${...bottom_up.model_name}", stage="${..in_feature}"),
    out_channels="${..out_channels}",
    in_feature="res5",
    relu_before_p7=False,
)
model.pixel_mean = _PIXEL["pixel_mean"]
model.pixel_std = _PIXEL["pixel_std"]
model.input_format = _PIXEL["input_format"]
dataloader.train.mapper.use_instance_mask = False
optimizer.lr = 1e-4  # mmdet RSB RetinaNet
