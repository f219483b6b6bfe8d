"""Detectron2 modules that reproduce mmdetection v2 behaviour a config cannot express.

Importing this package registers :class:`MMDetCascadeROIHeads` in ``ROI_HEADS_REGISTRY`` and
:class:`MMDetRetinaNet` in ``META_ARCH_REGISTRY`` (for yacs configs); LazyConfigs name the
classes directly (``configs/COCO/*_mmdet.py``).
"""

from .mmdet_cascade import SCORE_AVERAGING, MMDetCascadeROIHeads
from .mmdet_retinanet import MMDetRetinaNet

__all__ = ["MMDetCascadeROIHeads", "MMDetRetinaNet", "SCORE_AVERAGING"]
