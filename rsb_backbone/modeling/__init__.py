"""Detectron2 modules that reproduce mmdetection v2 behaviour a config cannot express.

Importing this package registers the cascade RoI heads, RetinaNet and RPN for yacs configs;
LazyConfigs name the classes directly (``configs/common/mmdet_training.py``).
"""

from .mmdet_cascade import MMDetCascadeROIHeads
from .mmdet_init import MMDetBoxHead, MMDetFPN, MMDetMaskHead
from .mmdet_matcher import MMDetMatcher
from .mmdet_retinanet import MMDetRetinaNet
from .mmdet_rpn import MMDetRPN
from .padding_anchors import anchors_on_image

__all__ = [
    "MMDetBoxHead",
    "MMDetCascadeROIHeads",
    "MMDetFPN",
    "MMDetMaskHead",
    "MMDetMatcher",
    "MMDetRPN",
    "MMDetRetinaNet",
    "anchors_on_image",
]
