"""The reference for the benchmark: an RSB detector with Detectron2's own ResNet as its trunk.

The baseline is the same LazyConfig model with ``model.backbone.bottom_up`` replaced by Detectron2's
torchvision-style ResNet (``BasicStem``, ``BottleneckBlock`` with the stride on the 3x3 conv) holding
the RSB model's weights, its norm layers matched in cost as well as in value (``FrozenStatsBN``:
``norm="BN"`` kept in eval mode; see projects/benchmark/README.md, "How the comparison is kept fair").
Both compute the same function with the same work: a difference in time or memory is the trunk's.
"""

import copy
import inspect
import math
import re
from typing import Dict, List, Sequence

from torch import nn

from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import BasicStem, ResNet
from detectron2.utils.registry import locate

from rsb_backbone import FROZEN_STATS_BN, NORM_MODES, TimmResNet
from rsb_backbone.modeling.backbone.timm_resnet import set_batchnorm_eval

# timm ResNets that Detectron2's ResNet.make_default_stages builds (plain 7x7 stem): name -> depth.
_DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}
_BOTTOM_UP = "backbone.bottom_up."
# TimmResNet arguments the Detectron2 trunk takes over ("weights" travels by copy_rsb_weights).
_SHARED_ARGUMENTS = ("model_name", "out_features", "freeze_at", "norm")


class EvalStatsResNet(ResNet):
    """Detectron2's ResNet whose BatchNorm layers stay in eval mode (the ``FrozenStatsBN`` mode): running
    statistics never change while gamma and beta train, as in the RSB trunk."""

    def train(self, mode: bool = True) -> "EvalStatsResNet":
        super().train(mode)
        set_batchnorm_eval(self)
        return self


def build_detectron2_resnet(
    *,
    model_name: str = "resnet50",
    out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
    freeze_at: int = 0,
    norm: str = "FrozenBN",
) -> ResNet:
    """Detectron2's ResNet shaped and normalized like a :class:`TimmResNet` with these arguments.

    Args:
        model_name: the TimmResNet architecture; one of resnet18/34/50/101/152.
        out_features: which of ``res2``..``res5`` to return.
        freeze_at: as in Detectron2 and TimmResNet (2 = stem and res2 frozen).
        norm: a TimmResNet norm mode; ``FrozenStatsBN`` becomes ``"BN"`` kept in eval mode.
    """
    if model_name not in _DEPTHS:
        raise ValueError(
            f"model_name={model_name!r} has no Detectron2 counterpart; expected one of {', '.join(_DEPTHS)}"
        )
    if norm not in NORM_MODES:
        raise ValueError(f"norm={norm!r} is not supported; expected one of {', '.join(NORM_MODES)}")
    depth = _DEPTHS[model_name]
    d2_norm = "BN" if norm == FROZEN_STATS_BN else norm
    # torchvision/timm ResNets stride on the 3x3 conv; BasicBlock (depth < 50) has no such choice.
    stage_args = dict(stride_in_1x1=False) if depth >= 50 else {}
    stages = ResNet.make_default_stages(depth=depth, norm=d2_norm, **stage_args)
    stem = BasicStem(in_channels=3, out_channels=64, norm=d2_norm)
    resnet_class = EvalStatsResNet if norm == FROZEN_STATS_BN else ResNet
    trunk = resnet_class(stem, stages, out_features=list(out_features), freeze_at=freeze_at)
    if norm == FROZEN_STATS_BN:
        set_batchnorm_eval(trunk)
    return trunk


def baseline_model_config(model_cfg):
    """A copy of an RSB detector's ``model`` config with Detectron2's ResNet as the trunk.

    Args:
        model_cfg: ``cfg.model`` of one of the RSB LazyConfigs; its ``backbone.bottom_up`` must be
            a lazy :class:`TimmResNet`.

    Returns:
        a new config; ``model_cfg`` is not changed.
    """
    trunk = model_cfg.backbone.bottom_up
    target = trunk.get("_target_")
    if isinstance(target, str):  # a config that went through YAML names its targets
        target = locate(target)
    if target is not TimmResNet:
        raise ValueError(f"model.backbone.bottom_up builds {target!r}; expected TimmResNet")
    defaults = inspect.signature(TimmResNet.__init__).parameters  # for arguments the config leaves out
    args = {name: trunk.get(name, defaults[name].default) for name in _SHARED_ARGUMENTS}
    args["out_features"] = list(args["out_features"])
    baseline = copy.deepcopy(model_cfg)
    baseline.backbone.bottom_up = L(build_detectron2_resnet)(**args)
    return baseline


def timm_to_detectron2_key(key: str) -> str:
    """Rename one timm ResNet key (``layer1.0.bn1.weight``) to Detectron2's (``res2.0.conv1.norm.weight``)."""
    key = re.sub(r"^conv1\.", "stem.conv1.", key)
    key = re.sub(r"^bn1\.", "stem.conv1.norm.", key)
    key = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", key)
    key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
    return key.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")


def copy_rsb_weights(rsb_model: nn.Module, baseline_model: nn.Module) -> None:
    """Load every parameter and buffer of ``rsb_model`` into ``baseline_model`` (strict).

    Keys under ``backbone.bottom_up.`` are renamed from timm's layout to Detectron2's; all others
    (FPN, heads) are the same modules in both models.
    """
    renamed = {}
    for key, value in rsb_model.state_dict().items():
        if key.startswith(_BOTTOM_UP):
            key = _BOTTOM_UP + timm_to_detectron2_key(key[len(_BOTTOM_UP) :])
        renamed[key] = value
    baseline_model.load_state_dict(renamed, strict=True)


def max_output_difference(outputs_a: List[Dict], outputs_b: List[Dict]) -> float:
    """Largest absolute difference between two detectors' inference outputs.

    Args:
        outputs_a, outputs_b: what Detectron2 meta-architectures return in eval mode, one dict
            with ``"instances"`` per image.

    Returns:
        0.0 for identical outputs, ``inf`` when the images, fields or numbers of detections differ.
    """
    if len(outputs_a) != len(outputs_b):
        return math.inf
    worst = 0.0
    for a, b in zip(outputs_a, outputs_b):
        fields_a, fields_b = (
            {k: getattr(v, "tensor", v) for k, v in o["instances"].get_fields().items()} for o in (a, b)
        )
        if fields_a.keys() != fields_b.keys():
            return math.inf
        for name, value_a in fields_a.items():
            value_b = fields_b[name]
            if value_a.shape != value_b.shape:
                return math.inf
            if value_a.numel():
                worst = max(worst, (value_a.double() - value_b.double()).abs().max().item())
    return worst
