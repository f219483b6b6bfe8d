# The 3x schedule with multi-scale training, shared by the twelve configs/COCO/*_rsb_r*_fpn_3x.py.
# Each of them imports its 1x config and takes from here only the schedule (lr_multiplier,
# train.max_iter) and the training resize; the optimizer, the warmup (500 iterations, linear, from
# 0.001) and the evaluation and checkpoint periods (one epoch, ITERS_PER_EPOCH in rsb_base.py, so
# 36 evaluations) stay the 1x recipe's.
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from .rsb_base import ITERS_PER_EPOCH

# ---- schedule: mmdet 3x = 36 epochs at batch 16 ------------------------------------------------
# mmdet v2 configs/common/mstrain_3x_coco.py: RepeatDataset(times=3), max_epochs=12, lr steps after
# "epochs" 9 and 11 of the repeated set = 36 COCO epochs with drops after epochs 27 and 33.
MAX_ITER = 36 * ITERS_PER_EPOCH  # 263,880 (Detectron2's 3x: 270,000 at batch 16)
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        # after epochs 27 and 33: iterations 197,910 and 241,890
        milestones=[27 * ITERS_PER_EPOCH, 33 * ITERS_PER_EPOCH, MAX_ITER],
    ),
    warmup_length=500 / MAX_ITER,  # 500 iterations, linear, from 0.001 (as the 1x)
    warmup_method="linear",
    warmup_factor=0.001,
)

# ---- data: shorter side sampled from 640-800, longer side at most 1333 --------------------------
# Detectron2's 3x (common/data/coco.py: ResizeShortestEdge((640, 672, ..., 800), max_size=1333,
# sample_style="choice"), which rsb_base.py narrows to 800 for the 1x); mmdetection's mstrain 3x
# samples the same range continuously (img_scale=[(1333, 640), (1333, 800)], multiscale_mode="range").
# The test resize stays single scale 800 / 1333.
TRAIN_SHORT_EDGES = (640, 672, 704, 736, 768, 800)
