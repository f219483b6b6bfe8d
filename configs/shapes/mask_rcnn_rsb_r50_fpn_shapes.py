# Mask R-CNN RSB R-50-FPN on the generated shapes data (CPU demo; see configs/common/shapes_demo.py).
from ..COCO.mask_rcnn_rsb_r50_fpn_1x import model, optimizer
from ..common.shapes_demo import NUM_CLASSES, dataloader, lr_multiplier, train

model.backbone.bottom_up.weights = None
model.roi_heads.num_classes = NUM_CLASSES
model.roi_heads.batch_size_per_image = 128  # 512 on COCO; a few objects per small image here
train.output_dir = "./output/shapes/mask_rcnn"
