"""One entry point for a predictor from either config system."""

import logging
from typing import Sequence

import numpy as np
import torch

from detectron2.config import CfgNode
from detectron2.engine import DefaultPredictor

from ..checkpoint.detection_checkpoint import load_detector_checkpoint
from ..checkpoint.model_metadata import detectron2_metadata
from ..config import YACS, config_file_kind, load_yacs_config
from ..modeling.fold_norms import to_deployment_form
from ..utils.mixed_precision import autocast, outputs_to_float32, resolve_precision
from .lazy_predictor import LazyConfigPredictor

logger = logging.getLogger(__name__)


class AutocastPredictor(DefaultPredictor):
    """Detectron2's ``DefaultPredictor`` computing under ``torch.autocast``; outputs in float32.

    Args:
        cfg: as for ``DefaultPredictor``.
        precision: torch.bfloat16, or torch.float16 on CUDA.
    """

    def __init__(self, cfg: CfgNode, precision: torch.dtype):
        super().__init__(cfg)
        self.precision = precision

    def __call__(self, original_image: np.ndarray):
        with autocast(self.cfg.MODEL.DEVICE, self.precision):
            outputs = super().__call__(original_image)
        return outputs_to_float32(outputs)


def build_default_predictor(cfg: CfgNode, *, fuse: bool = False) -> DefaultPredictor:
    """Detectron2's ``DefaultPredictor`` for ``cfg``, with the checkpoint's own class names; an
    :class:`AutocastPredictor` when ``TEST.PRECISION`` (:func:`~rsb_backbone.inference.get_rsb_cfg`'s
    ``precision``) is not float32.

    ``MODEL.WEIGHTS`` is read by :func:`load_detector_checkpoint` (differences: docs/inference_and_publishing.md).

    Args:
        cfg: a yacs config (e.g. :func:`~rsb_backbone.inference.get_rsb_cfg`) with ``MODEL.WEIGHTS`` set.
        fuse: run the deployment form of the model (:func:`rsb_backbone.export.to_deployment_form`).
    """
    checkpoint = cfg.MODEL.WEIGHTS
    if not checkpoint:
        raise ValueError("a yacs predictor needs a checkpoint (MODEL.WEIGHTS)")
    without_weights = cfg.clone()
    without_weights.defrost()
    without_weights.MODEL.WEIGHTS = ""  # DefaultPredictor would read it with its own loader
    precision = resolve_precision(
        cfg.TEST.get("PRECISION", "float32"), cfg.MODEL.DEVICE, key="TEST.PRECISION"
    )
    if precision == torch.float32:
        predictor = DefaultPredictor(without_weights)
    else:
        predictor = AutocastPredictor(without_weights, precision)
    predictor.cfg.MODEL.WEIGHTS = checkpoint
    stored = load_detector_checkpoint(predictor.model, checkpoint)
    predictor.metadata = detectron2_metadata(stored, getattr(predictor, "metadata", None), name=checkpoint)
    if fuse:
        to_deployment_form(predictor.model)
    return predictor


def build_predictor(
    config_file: str,
    checkpoint: str,
    *,
    device: str = "cpu",
    score_threshold: float = 0.5,
    opts: Sequence[str] = (),
    fuse: bool = False,
    precision: str = "float32",
):
    """A ``DefaultPredictor`` for a yacs config, a :class:`LazyConfigPredictor` for a LazyConfig.

    Both take a BGR (H, W, 3) uint8 image, return ``{"instances": ...}`` in original image
    coordinates and expose ``model`` and ``metadata`` (the checkpoint's class names first).

    Args:
        config_file: a yacs YAML or a LazyConfig (:func:`config_file_kind` tells).
        opts: config overrides: ``KEY=VALUE`` (or yacs ``KEY VALUE`` pairs).
        checkpoint, device, score_threshold, fuse, precision: as for :class:`LazyConfigPredictor`.
    """
    if config_file_kind(config_file) == YACS:
        cfg = load_yacs_config(
            config_file,
            opts=opts,
            checkpoint=checkpoint,
            device=device,
            score_threshold=score_threshold,
            precision=precision,
        )
        return build_default_predictor(cfg, fuse=fuse)
    return LazyConfigPredictor(
        config_file,
        checkpoint,
        device=device,
        score_threshold=score_threshold,
        overrides=opts,
        fuse=fuse,
        precision=precision,
    )
