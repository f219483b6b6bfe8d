# Faster R-CNN R-101-FPN, RSB backbone, 1x: faster_rcnn_rsb_r50_fpn_1x.py
# with timm's resnet101 trunk and its RSB weights resnet101.a1h_in1k (ImageNet top-1 81.95 at
# 224 px, against 80.38 for the R-50's resnet50.a1_in1k); the R-50 recipe otherwise.
# No published COCO result: docs/model_zoo.md.
from rsb_backbone import pixel_normalization

from .faster_rcnn_rsb_r50_fpn_1x import dataloader, lr_multiplier, model, optimizer, train

# timm's "a1h": the RSB A1 recipe with stronger dropout, stochastic depth and RandAugment.
model.backbone.bottom_up.update(model_name="resnet101", weights="resnet101.a1h_in1k")
# RGB pixel statistics of the weights' timm pretrained config x 255 (ImageNet's, as for R-50).
_PIXEL = pixel_normalization(model.backbone.bottom_up.weights)
model.update(pixel_mean=_PIXEL["pixel_mean"], pixel_std=_PIXEL["pixel_std"])
