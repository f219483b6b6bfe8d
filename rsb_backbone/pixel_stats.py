"""Input normalization of a timm pretrained model, in Detectron2's terms."""

from typing import Dict, List, Union


def pixel_normalization(pretrained_name: str = "resnet50.a1_in1k") -> Dict[str, Union[List[float], str]]:
    """Detectron2's ``pixel_mean``, ``pixel_std`` and ``input_format`` for a timm model.

    timm's statistics are for RGB in [0, 1], Detectron2's for 0-255 pixels, hence the factor 255
    (ImageNet's give mmdetection's mean [123.675, 116.28, 103.53], std [58.395, 57.12, 57.375]).

    Args:
        pretrained_name: a timm name with or without tag (the default tag is used without).

    Returns:
        dict with ``pixel_mean``, ``pixel_std`` (3 floats each, RGB order) and ``input_format`` "RGB".
    """
    import timm

    cfg = timm.models.get_pretrained_cfg(pretrained_name)
    if cfg is None:
        raise ValueError(f"{pretrained_name!r} has no timm pretrained config to take statistics from")
    if tuple(cfg.input_size)[0] != 3:
        raise ValueError(f"{pretrained_name!r} takes {cfg.input_size[0]}-channel input; expected RGB")
    return {
        "pixel_mean": [round(m * 255.0, 6) for m in cfg.mean],
        "pixel_std": [round(s * 255.0, 6) for s in cfg.std],
        "input_format": "RGB",
    }
