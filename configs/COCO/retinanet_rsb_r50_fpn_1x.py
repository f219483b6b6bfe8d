# RetinaNet R-50-FPN, RSB-A1 backbone, 1x (mmdet: 39.0 box AP, 3.8 GB).
# Settings: docs/mmdet_rsb_settings.md section 1E.
# P3-P7 with P6 from C5 and, like mmdetection, no ReLU between P6 and P7.
from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from rsb_backbone import retinanet_fpn

from ..common.rsb_base import _PIXEL, _rsb_trunk, dataloader, lr_multiplier, optimizer, train

model = model_zoo.get_config("common/models/retinanet.py").model
_rsb_trunk.out_features = ["res3", "res4", "res5"]
model.backbone = L(retinanet_fpn)(bottom_up=_rsb_trunk, out_channels=256, relu_before_p7=False)
model.pixel_mean = _PIXEL["pixel_mean"]
model.pixel_std = _PIXEL["pixel_std"]
model.input_format = _PIXEL["input_format"]
dataloader.train.mapper.use_instance_mask = False
optimizer.lr = 1e-4  # mmdet RSB RetinaNet
