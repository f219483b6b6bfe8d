"""RSB-Detectron2: timm's "ResNet strikes back" ResNets (R-50, R-101, R-152) as Detectron2 backbones,
with mmdetection's four RSB detectors as configs and heads, training and evaluation, TorchScript and
ONNX export, and mmdetection's released RSB checkpoints by name.

Importing it registers the yacs backbone builders and the mmdetection-faithful heads in
Detectron2's registries and nothing else: no data sets (``rsb_backbone.data`` registers the shapes
demo's, as ``detectron2.data`` registers its builtin sets) and no OpenCV import. Earlier module
names (``rsb_backbone.export``, ``rsb_backbone.modeling.backbone.timm_resnet``, ...) still import.
"""

from .checkpoint.tensor_files import WeightFileError
from .modeling.backbone import (
    FROZEN_STATS_BN,
    NORM_MODES,
    STAGE_NAMES,
    RetinaNetP6P7,
    TimmResNet,
    add_rsb_config,
    pixel_normalization,
    stage_channels,
)
from .utils import moved_modules

moved_modules.install()

__version__ = "0.1.0"

__all__ = [
    "TimmResNet",
    "STAGE_NAMES",
    "RetinaNetP6P7",
    "stage_channels",
    "NORM_MODES",
    "FROZEN_STATS_BN",
    "pixel_normalization",
    "WeightFileError",
    "add_rsb_config",
]
