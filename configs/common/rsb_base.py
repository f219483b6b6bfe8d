# Settings shared by the four RSB detectors: mmdetection's RSB recipe
# (configs/resnet_strikes_back, mmdet v2.22) expressed in Detectron2.
# Every value and its source: docs/mmdet_rsb_settings.md (sections 1A, 2).
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler

from rsb_backbone import FROZEN_STATS_BN, TimmResNet, pixel_normalization
from rsb_backbone.data import EvaluationDatasetMapper, SkippingDatasetMapper

# ---- backbone: timm ResNet-50 with the RSB A1 ImageNet weights --------------------------------
RSB_WEIGHTS = "resnet50.a1_in1k"
# RGB, ImageNet mean/std x 255 = mmdetection's [123.675, 116.28, 103.53] / [58.395, 57.12, 57.375]
# (the numbers of Detectron2's common/data/constants.py imagenet_rgb256_*). Read from timm's
# pretrained config of the weights, so that weights with other statistics bring their own.
# Names with a leading underscore are helpers for the detector configs: LazyConfig.load drops
# them, so a loaded config holds only dataloader, lr_multiplier, model, optimizer and train, and
# an override can only name a key that the model or training actually reads.
_PIXEL = pixel_normalization(RSB_WEIGHTS)

_rsb_trunk = L(TimmResNet)(
    model_name="resnet50",
    weights=RSB_WEIGHTS,
    out_features=["res2", "res3", "res4", "res5"],
    freeze_at=2,  # mmdet frozen_stages=1: stem + layer1 (= res2)
    norm=FROZEN_STATS_BN,  # mmdet norm_eval=True with trainable gamma/beta
)

# ---- data: COCO 2017, single scale 800/1333, horizontal flip, RGB -----------------------------
dataloader = model_zoo.get_config("common/data/coco.py").dataloader
dataloader.train.mapper.augmentations[0].short_edge_length = (800,)  # mmdet (1333, 800), no multi-scale
dataloader.train.mapper.image_format = _PIXEL["input_format"]  # the test mapper interpolates this
# Unreadable training images are skipped with a warning (and counted) instead of ending the run.
dataloader.train.mapper._target_ = SkippingDatasetMapper
# An unreadable evaluation image stops evaluation with one line naming it (AP needs every image).
dataloader.test.mapper._target_ = EvaluationDatasetMapper

# ---- optimizer: AdamW, lr 2e-4 (RetinaNet 1e-4), wd 0.05, no decay on norm parameters ---------
# Detectron2's common AdamW (betas 0.9/0.999, no weight decay on norm parameters) with mmdet's
# RSB learning rate and weight decay.
optimizer = model_zoo.get_config("common/optim.py").AdamW
optimizer.lr = 2e-4
optimizer.weight_decay = 0.05

# ---- schedule: mmdet 1x = 12 epochs at batch 16 ------------------------------------------------
# 117,266 COCO train2017 images with annotations / 16 = 7,329.1 -> 7,330 iterations per epoch.
ITERS_PER_EPOCH = 7330
MAX_ITER = 12 * ITERS_PER_EPOCH  # 87,960
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01],
        milestones=[8 * ITERS_PER_EPOCH, 11 * ITERS_PER_EPOCH, MAX_ITER],  # after epochs 8 and 11
    ),
    warmup_length=500 / MAX_ITER,  # 500 iterations, linear, from 0.001
    warmup_method="linear",
    warmup_factor=0.001,
)

# ---- training loop -----------------------------------------------------------------------------
train = model_zoo.get_config("common/train.py").train
train.max_iter = MAX_ITER
train.eval_period = ITERS_PER_EPOCH  # mmdet evaluates every epoch
train.checkpointer = dict(period=ITERS_PER_EPOCH, max_to_keep=3)
train.output_dir = "./output"
train.device = "auto"  # CUDA when present, else CPU (Detectron2's common/train.py says "cuda")
# Gradient clipping (mmdet RSB: none). train_net.py reads this.
train.clip_grad = dict(enabled=False, max_norm=35.0, norm_type=2.0)
# Mixed precision (mmdet RSB: fp32): train.amp.enabled=True trains and evaluates under autocast in
# this precision: "float16" (CUDA, with a gradient scaler; Detectron2's default) or "bfloat16"
# (CUDA, and CPUs with bf16 instructions).
train.amp = dict(enabled=False, precision="float16")
# A process in which no iteration finished for this long (saves and evaluations left out) writes
# its stack and ends the job (exit code 124; under SLURM it requeues): 15 minutes, well above an
# iteration plus a checkpoint save here. 0: no watchdog. docs/failure_behaviour.md.
train.watchdog_s = 900
