"""yacs configs (``configs/yacs``) of the four RSB detectors, ready for ``DefaultPredictor``; they
mirror the LazyConfigs of ``configs/COCO``, so checkpoints trained with those load into them."""

import os
from typing import Optional, Sequence

from detectron2.config import CfgNode, get_cfg

from ..modeling.backbone.fpn import add_rsb_config
from ..modeling.backbone.timm_weights import pixel_normalization
from ..utils.mixed_precision import precision_name
from .files import get_config_file
from .run_settings import head_config, resolve_device, set_score_threshold

# Each has its COCO 1x yacs config, configs/yacs/{arch}_rsb_r50_fpn_1x.yaml.
ARCHITECTURES = ("faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet")
# The trunks of the LazyConfigs configs/COCO/*_rsb_r{50,101,152}_fpn_*.py and their RSB weights,
# whose timm pretrained config gives the pixel statistics (docs/model_zoo.md).
TRUNK_WEIGHTS = {
    "resnet50": "resnet50.a1_in1k",
    "resnet101": "resnet101.a1h_in1k",
    "resnet152": "resnet152.a1h_in1k",
}


def yacs_config_file(arch: str) -> str:
    """Path of the COCO 1x yacs config of ``arch`` (one of :data:`ARCHITECTURES`)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch={arch!r}: expected one of {', '.join(ARCHITECTURES)}")
    return get_config_file(f"yacs/{arch}_rsb_r50_fpn_1x.yaml")


def _pairs(opts: Sequence[str]) -> list:
    """``["A", "1", "B=2"]`` -> ``["A", "1", "B", "2"]``: yacs pairs, ``KEY=VALUE`` also allowed."""
    flat, tokens = [], iter(opts)
    for token in tokens:
        pair = token.split("=", 1) if "=" in token else [token, next(tokens, None)]
        if pair[1] is None:
            raise ValueError(f"config override {token!r} has no value; expected KEY VALUE or KEY=VALUE")
        flat += pair
    return flat


def load_yacs_config(
    config_file: str,
    *,
    opts: Sequence[str] = (),
    checkpoint: Optional[str] = None,
    device: Optional[str] = None,
    score_threshold: Optional[float] = None,
    precision: Optional[str] = None,
) -> CfgNode:
    """Read a yacs config with the ``MODEL.RSB`` keys and ``TEST.PRECISION``, apply overrides and
    inference settings.

    Args:
        config_file: a yacs YAML file, e.g. one in ``configs/yacs``.
        opts: overrides as ``KEY VALUE`` pairs or ``KEY=VALUE`` strings (yacs rejects unknown keys).
        checkpoint: detector checkpoint for ``MODEL.WEIGHTS``; None keeps the config's.
        device: ``MODEL.DEVICE`` ("cpu", "cuda", "cuda:1", or "auto"); None keeps the config's.
        score_threshold: smallest score of a returned detection, in [0, 1]; None keeps the config's.
        precision: ``TEST.PRECISION``, the precision of the predictor and of ``--eval-only``:
            "float32" (the default), "bfloat16", or "float16" (CUDA), under ``torch.autocast``;
            None keeps the config's.

    Returns:
        an unfrozen CfgNode.
    """
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    cfg = add_rsb_config(get_cfg())  # Detectron2's defaults and MODEL.RSB, then the file
    cfg.TEST.PRECISION = "float32"
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(_pairs(opts))
    if checkpoint is not None:
        cfg.MODEL.WEIGHTS = os.fspath(checkpoint)
    if device is not None:
        cfg.MODEL.DEVICE = resolve_device(device)
    if score_threshold is not None:
        set_score_threshold(cfg, score_threshold)
    # The device is checked where the model is built.
    cfg.TEST.PRECISION = precision_name(
        cfg.TEST.PRECISION if precision is None else precision, key="TEST.PRECISION"
    )
    return cfg


def _trunk_opts(trunk: str) -> list:
    """``KEY=VALUE`` overrides giving the yacs configs (written for ResNet-50) the trunk ``trunk``."""
    if trunk not in TRUNK_WEIGHTS:
        raise ValueError(f"trunk={trunk!r}: expected one of {', '.join(TRUNK_WEIGHTS)}")
    pixel = pixel_normalization(TRUNK_WEIGHTS[trunk])
    return [
        f"MODEL.RSB.MODEL_NAME={trunk}",
        f"MODEL.PIXEL_MEAN={pixel['pixel_mean']}",
        f"MODEL.PIXEL_STD={pixel['pixel_std']}",
    ]


def get_rsb_cfg(
    arch: str,
    *,
    trunk: str = "resnet50",
    checkpoint: Optional[str] = None,
    device: str = "cpu",
    score_threshold: float = 0.5,
    precision: str = "float32",
    num_classes: Optional[int] = None,
    min_size_test: Optional[int] = None,
    max_size_test: Optional[int] = None,
    test_dataset: Optional[str] = None,
    opts: Sequence[str] = (),
) -> CfgNode:
    """A yacs config for ``DefaultPredictor(cfg)`` (or COCO evaluation with ``--eval-only``).

    Args:
        arch: one of :data:`ARCHITECTURES`.
        trunk: a key of :data:`TRUNK_WEIGHTS`: ``MODEL.RSB.MODEL_NAME``, and ``MODEL.PIXEL_MEAN`` /
            ``PIXEL_STD`` of its RSB weights, as the LazyConfigs ``{arch}_rsb_r{50,101,152}_fpn_*``
            set them. ``MODEL.RSB.WEIGHTS`` stays empty, as for ResNet-50: the detector checkpoint
            holds the trunk (``opts`` may name ``TRUNK_WEIGHTS[trunk]`` there to start from them).
        checkpoint, device, score_threshold, precision, opts: as in :func:`load_yacs_config`; ``checkpoint``
            may be the ``model_final.pth`` of a training run of the LazyConfig of the same
            architecture and trunk (1x or 3x). ``opts`` are applied after the trunk's keys.
        num_classes: classes of the checkpoint; None keeps COCO's 80.
        min_size_test: short side images are resized to (``INPUT.MIN_SIZE_TEST``); None keeps 800.
        max_size_test: longest side after resizing (``INPUT.MAX_SIZE_TEST``); None keeps 1333.
        test_dataset: registered data set whose metadata (class names) ``DefaultPredictor``
            exposes as ``predictor.metadata`` (``DATASETS.TEST``); None keeps coco_2017_val.
    """
    cfg = load_yacs_config(
        yacs_config_file(arch),
        opts=[*_trunk_opts(trunk), *opts],
        checkpoint=checkpoint,
        device=device,
        score_threshold=score_threshold,
        precision=precision,
    )
    if num_classes is not None:
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}: expected at least 1")
        head_config(cfg).NUM_CLASSES = int(num_classes)
    for key, value in (("MIN_SIZE_TEST", min_size_test), ("MAX_SIZE_TEST", max_size_test)):
        if value is not None:
            if value < 1:
                raise ValueError(f"{key.lower()}={value}: expected a positive number of pixels")
            cfg.INPUT[key] = int(value)
    if test_dataset is not None:
        cfg.DATASETS.TEST = (test_dataset,)
    return cfg
