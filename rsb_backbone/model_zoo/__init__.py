"""The project's configs by name relative to ``configs/``, as ``detectron2.model_zoo`` gives Detectron2's
(see the README): package data of an installed copy (``setup.py``), else the checkout's ``configs/``;
and, for the configs of mmdetection's released detectors, the trained models
(``get(config_path, trained=True)``, :mod:`rsb_backbone.checkpoint.catalog`)."""

import os
from typing import Optional, Union

from detectron2.config import CfgNode, LazyConfig, instantiate
from detectron2.modeling import build_model
from omegaconf import DictConfig
from torch import nn

from ..checkpoint.catalog import RELEASED_CHECKPOINTS, SCHEME
from ..checkpoint.detection_checkpoint import load_detector_checkpoint
from ..checkpoint.model_metadata import detectron2_metadata
from ..config import configs_root, get_config_file, load_yacs_config, resolve_device
from ..modeling.backbone.timm_resnet import skip_pretrained_weights

__all__ = ["configs_root", "get", "get_checkpoint_url", "get_config", "get_config_file"]


def get_checkpoint_url(config_path: str) -> str:
    """The name of the released checkpoint trained with a config, as Detectron2's function of
    this name gives the URL of its model zoo's: ``mmdet://...``, accepted wherever a checkpoint is.

    Args:
        config_path: a config relative to ``configs/``, e.g. ``COCO/mask_rcnn_rsb_r50_fpn_1x_mmdet.py``.

    Raises:
        ValueError: no released checkpoint was trained with that config; the message lists those that were.
    """
    wanted = os.path.normpath(config_path)
    for release in RELEASED_CHECKPOINTS.values():
        if os.path.normpath(release.config) == wanted:
            return SCHEME + release.name
    known = ", ".join(r.config for r in RELEASED_CHECKPOINTS.values())
    raise ValueError(f"{config_path}: no released checkpoint for this config; released: {known}")


def get_config(config_path: str, trained: bool = False) -> Union[DictConfig, CfgNode]:
    """A config by name (as for :func:`get_config_file`): a LazyConfig for ``.py``, an unfrozen
    yacs CfgNode with ``MODEL.RSB`` for ``.yaml``.

    Args:
        config_path: a config relative to ``configs/``.
        trained: set the released checkpoint (:func:`get_checkpoint_url`) as ``train.init_checkpoint``
            (``MODEL.WEIGHTS``) and skip the backbone's ImageNet weights, which it replaces.
    """
    path = get_config_file(config_path)
    if path.endswith(".py"):
        cfg = LazyConfig.load(path)
        if trained:
            cfg.train.init_checkpoint = get_checkpoint_url(config_path)
            skip_pretrained_weights(cfg.model)
        return cfg
    if path.endswith((".yaml", ".yml")):
        return load_yacs_config(path, checkpoint=get_checkpoint_url(config_path) if trained else None)
    raise ValueError(f"config {config_path!r}: expected a .py LazyConfig or a .yaml yacs config")


def get(config_path: str, trained: bool = False, device: Optional[str] = None) -> nn.Module:
    """The model of a config, as Detectron2's ``model_zoo.get``; with ``trained``, in eval mode with
    the released weights and its class names as ``model.metadata.thing_classes``.

    Args:
        config_path: a config relative to ``configs/``.
        trained: load the released checkpoint (:func:`get_checkpoint_url`; downloaded, converted and
            cached on first use), else keep the config's initialization.
        device: "cpu", "cuda", "cuda:N"; None or "auto" for CUDA when present.
    """
    cfg = get_config(config_path, trained=trained)
    device = resolve_device(device or "auto")
    if isinstance(cfg, CfgNode):
        cfg.MODEL.DEVICE = device
        checkpoint, model = cfg.MODEL.WEIGHTS, build_model(cfg)
    else:
        checkpoint, model = cfg.train.init_checkpoint, instantiate(cfg.model)
    if trained:
        stored = load_detector_checkpoint(model, checkpoint)
        model.metadata = detectron2_metadata(stored, name=checkpoint)
        model.eval()
    return model.to(device)
