# The quickest CPU demo: Faster R-CNN with a ResNet-18 trunk (timm's RSB tags exist for it too:
# resnet18.a1_in1k ...) on the generated shapes at a short side of 128, 200 iterations from random
# init. BatchNorm uses batch statistics (norm="BN") and nothing is frozen, which suits training
# from scratch; the R-50 configs beside this one keep the RSB recipe (FrozenStatsBN, freeze_at=2).
from .faster_rcnn_rsb_r50_fpn_shapes import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.model_name = "resnet18"
model.backbone.bottom_up.norm = "BN"
model.backbone.bottom_up.freeze_at = 0
# 64 sampled RoIs per image (COCO: 512; the R-50 shapes configs: 128): a few shapes per image, and
# the box head's two fully connected layers are most of a CPU iteration's time at this size.
model.roi_heads.batch_size_per_image = 64
optimizer.lr = 5e-4

dataloader.train.mapper.augmentations[0].short_edge_length = (128,)
dataloader.test.mapper.augmentations[0].short_edge_length = 128

MAX_ITER = 200
train.max_iter = MAX_ITER
train.eval_period = MAX_ITER
lr_multiplier.scheduler.milestones = [int(MAX_ITER * 0.8), MAX_ITER]
lr_multiplier.warmup_length = 20 / MAX_ITER
train.output_dir = "./output/shapes/faster_rcnn_r18_quick"
