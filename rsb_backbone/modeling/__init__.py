"""Detectron2 modules that reproduce mmdetection v2 behaviour a config cannot express.

Importing this package registers :class:`MMDetCascadeROIHeads` in ``ROI_HEADS_REGISTRY``,
:class:`MMDetRetinaNet` in ``META_ARCH_REGISTRY`` and :class:`MMDetRPN` in
``PROPOSAL_GENERATOR_REGISTRY`` (for yacs configs); LazyConfigs name the classes directly
(``configs/COCO/*_mmdet.py``, ``configs/common/mmdet_training.py``).
"""

from .mmdet_cascade import SCORE_AVERAGING, MMDetCascadeROIHeads
from .mmdet_init import MMDetBoxHead, MMDetFPN, MMDetMaskHead, xavier_uniform_fill_
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
    "SCORE_AVERAGING",
    "anchors_on_image",
    "xavier_uniform_fill_",
]
