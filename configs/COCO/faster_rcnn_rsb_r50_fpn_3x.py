# Faster R-CNN R-50-FPN, RSB backbone, 3x with multi-scale training: its 1x config
# (faster_rcnn_rsb_r50_fpn_1x.py) with the schedule and training resize of
# configs/common/schedule_3x.py (36 epochs, learning-rate drops after epochs 27 and 33, shorter
# side sampled from 640-800); the 1x recipe otherwise.
from ..common.schedule_3x import MAX_ITER, TRAIN_SHORT_EDGES, lr_multiplier
from .faster_rcnn_rsb_r50_fpn_1x import dataloader, model, optimizer, train

train.max_iter = MAX_ITER
dataloader.train.mapper.augmentations[0].short_edge_length = TRAIN_SHORT_EDGES
