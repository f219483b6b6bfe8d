"""RSB-Detectron2: timm's "ResNet strikes back" ResNet-50 as a Detectron2 backbone.

Importing it registers the yacs backbone builders in Detectron2's ``BACKBONE_REGISTRY`` and nothing
else: no data sets (the shapes demo's configs register theirs) and no OpenCV import.
"""

from .fpn import RetinaNetP6P7
from .norm_modes import FROZEN_STATS_BN, NORM_MODES
from .pixel_stats import pixel_normalization
from .timm_resnet import STAGE_NAMES, TimmResNet, stage_channels
from .tensor_files import WeightFileError
from .yacs_builders import add_rsb_config  # also registers the yacs backbone builders

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
