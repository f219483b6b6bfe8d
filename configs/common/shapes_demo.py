# The generated shapes data set (projects/shapes_demo: circles, squares, triangles with masks) at
# CPU-friendly sizes, for the configs/shapes/* demos. Random init by default, so that they run
# offline; pass model.backbone.bottom_up.weights=resnet50.a1_in1k (or a file) to fine-tune from
# the RSB weights. Any data set registered with --register-coco works too.
#
# Loading this file registers rsb_shapes_train/rsb_shapes_val (generated under
# $RSB_DATASETS/shapes on first use) from the repository's projects/shapes_demo, the way a
# Detectron2 project registers its own data. A copy of the configs without that folder (the
# installed package) registers nothing: use --register-coco there.
import logging
import os
import sys

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from .rsb_base import dataloader, train

_SHAPES_DEMO_DIR = os.path.normpath(
    os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "projects", "shapes_demo")
)
if os.path.isfile(os.path.join(_SHAPES_DEMO_DIR, "shapes_registration.py")):
    if _SHAPES_DEMO_DIR not in sys.path:
        sys.path.insert(0, _SHAPES_DEMO_DIR)
    from shapes_registration import register_shapes_demo_datasets

    register_shapes_demo_datasets()
else:
    logging.getLogger(__name__).info(
        "%s not found: rsb_shapes_train/rsb_shapes_val are not registered", _SHAPES_DEMO_DIR
    )

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
