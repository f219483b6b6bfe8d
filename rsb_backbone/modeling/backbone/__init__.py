"""The backbone: timm's ResNet family as a Detectron2 ``Backbone`` (its norm modes, weights and
input statistics) and the FPN pieces around it, with their yacs builders."""

from .fpn import RetinaNetP6P7, add_rsb_config  # also registers the yacs backbone builders
from .timm_resnet import FROZEN_STATS_BN, NORM_MODES, STAGE_NAMES, TimmResNet, stage_channels
from .timm_weights import pixel_normalization

__all__ = [
    "FROZEN_STATS_BN",
    "NORM_MODES",
    "STAGE_NAMES",
    "RetinaNetP6P7",
    "TimmResNet",
    "add_rsb_config",
    "pixel_normalization",
    "stage_channels",
]
