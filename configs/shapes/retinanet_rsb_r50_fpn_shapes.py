# RetinaNet RSB R-50-FPN on the generated shapes data (CPU demo; see configs/common/shapes_demo.py).
from ..COCO.retinanet_rsb_r50_fpn_1x import model, optimizer
from ..common.shapes_demo import NUM_CLASSES, dataloader, lr_multiplier, train

model.backbone.bottom_up.weights = None
model.num_classes = NUM_CLASSES
dataloader.train.mapper.use_instance_mask = False
train.output_dir = "./output/shapes/retinanet"
