"""One entry point for a predictor from either config system."""

import logging
from typing import Sequence

from detectron2.config import CfgNode
from detectron2.engine import DefaultPredictor

from ..deploy import to_deployment_form
from ..config import YACS, config_file_kind, load_yacs_config
from ..detector_checkpoint import load_detector_checkpoint
from ..model_metadata import detectron2_metadata
from .lazy_predictor import LazyConfigPredictor

logger = logging.getLogger(__name__)

__all__ = ["build_default_predictor", "build_predictor"]


def build_default_predictor(cfg: CfgNode, *, fuse: bool = False) -> DefaultPredictor:
    """Detectron2's ``DefaultPredictor`` for ``cfg``, with the checkpoint's own class names.

    Unlike ``DefaultPredictor(cfg)``, the checkpoint ``MODEL.WEIGHTS`` is read with
    :func:`load_detector_checkpoint` (tensors only; ``.safetensors`` too; every weight must fit
    the model), and ``predictor.metadata`` is the model metadata stored in it (class names,
    category ids) when it has some, else the metadata of ``DATASETS.TEST[0]`` as usual.

    Args:
        cfg: a yacs config, e.g. from :func:`~rsb_backbone.inference.get_rsb_cfg` or
            :func:`~rsb_backbone.inference.load_yacs_config`; ``MODEL.WEIGHTS`` must be set.
        fuse: run the deployment form of the model: norm layers folded into the convolutions
            before them (:func:`rsb_backbone.deploy.to_deployment_form`).
    """
    checkpoint = cfg.MODEL.WEIGHTS
    if not checkpoint:
        raise ValueError("a yacs predictor needs a checkpoint (MODEL.WEIGHTS)")
    without_weights = cfg.clone()
    without_weights.defrost()
    without_weights.MODEL.WEIGHTS = ""  # DefaultPredictor would read it with its own loader
    predictor = DefaultPredictor(without_weights)
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
):
    """A ``DefaultPredictor`` for a yacs config, a :class:`LazyConfigPredictor` for a LazyConfig.

    Both take a BGR (H, W, 3) uint8 image and return ``{"instances": ...}`` in original image
    coordinates, and expose ``metadata`` (class names) and ``model``. The class names and
    category ids stored with the checkpoint take precedence over the config's data set.

    Args:
        config_file: a yacs YAML (``configs/yacs/...``) or a LazyConfig (``.py``, or the
            ``config.yaml`` saved by ``train_net.py``); see :func:`config_file_kind`.
        checkpoint: detector checkpoint trained with that config, or its published file.
        device: "cpu", "cuda", "cuda:N" or "auto".
        score_threshold: smallest score of a returned detection.
        opts: config overrides: ``KEY VALUE`` pairs or ``KEY=VALUE`` for yacs, ``KEY=VALUE``
            for LazyConfigs.
        fuse: fold the norm layers into the convolutions (the deployment form of the model).
    """
    if config_file_kind(config_file) == YACS:
        cfg = load_yacs_config(
            config_file, opts=opts, checkpoint=checkpoint, device=device, score_threshold=score_threshold
        )
        return build_default_predictor(cfg, fuse=fuse)
    return LazyConfigPredictor(
        config_file, checkpoint, device=device, score_threshold=score_threshold, overrides=opts, fuse=fuse
    )
