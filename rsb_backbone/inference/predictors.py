"""One entry point for a predictor from either config system."""

from typing import Sequence

from detectron2.engine import DefaultPredictor

from .config_files import YACS, config_file_kind
from .lazy_predictor import LazyConfigPredictor
from .yacs_configs import load_yacs_config

__all__ = ["build_predictor"]


def build_predictor(
    config_file: str,
    checkpoint: str,
    *,
    device: str = "cpu",
    score_threshold: float = 0.5,
    opts: Sequence[str] = (),
):
    """A ``DefaultPredictor`` for a yacs config, a :class:`LazyConfigPredictor` for a LazyConfig.

    Both take a BGR (H, W, 3) uint8 image and return ``{"instances": ...}`` in original image
    coordinates, and expose ``metadata`` (class names) and ``model``.

    Args:
        config_file: a yacs YAML (``configs/yacs/...``) or a LazyConfig (``.py``, or the
            ``config.yaml`` saved by ``train_net.py``); see :func:`config_file_kind`.
        checkpoint: detector checkpoint trained with that config.
        device: "cpu", "cuda", "cuda:N" or "auto".
        score_threshold: smallest score of a returned detection.
        opts: config overrides: ``KEY VALUE`` pairs or ``KEY=VALUE`` for yacs, ``KEY=VALUE``
            for LazyConfigs.
    """
    if config_file_kind(config_file) == YACS:
        cfg = load_yacs_config(
            config_file, opts=opts, checkpoint=checkpoint, device=device, score_threshold=score_threshold
        )
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("a yacs predictor needs a checkpoint (MODEL.WEIGHTS)")
        return DefaultPredictor(cfg)
    return LazyConfigPredictor(
        config_file, checkpoint, device=device, score_threshold=score_threshold, overrides=opts
    )
