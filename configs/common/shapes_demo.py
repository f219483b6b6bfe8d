# The generated shapes data set (circles, squares, triangles with masks) at CPU-friendly sizes,
# for the configs/shapes/* demos. rsb_shapes_train/rsb_shapes_val are builtin data sets of
# rsb_backbone.data (generated under $RSB_DATASETS/shapes on first use), registered when that
# package is imported, as it is by rsb_base. Random init by default, so that they run offline;
# pass model.backbone.bottom_up.weights=resnet50.a1_in1k (or a file) to fine-tune from the RSB
# weights. Any data set registered with --register-coco works too.
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from .rsb_base import dataloader, train

NUM_CLASSES = 3  # train_net.py sets it from the training set's classes anyway

dataloader.train.dataset.names = "rsb_shapes_train"
dataloader.test.dataset.names = "rsb_shapes_val"
# Generated images are 160-256 px: train and test at a short side of 160 (mmdet: 800 on COCO).
dataloader.train.mapper.augmentations[0].short_edge_length = (160,)
dataloader.train.mapper.augmentations[0].max_size = 256
dataloader.test.mapper.augmentations[0].short_edge_length = 160
dataloader.test.mapper.augmentations[0].max_size = 256
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = 2
dataloader.test.num_workers = 1

MAX_ITER = 300
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1], milestones=[int(MAX_ITER * 0.8), MAX_ITER]
    ),
    warmup_length=30 / MAX_ITER,
    warmup_method="linear",
    warmup_factor=0.001,
)

train.max_iter = MAX_ITER
train.eval_period = MAX_ITER
train.checkpointer = dict(period=100, max_to_keep=2)
train.log_period = 10
train.seed = 42
