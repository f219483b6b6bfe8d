"""Norm folding: a folded convolution equals conv + norm, and a folded detector gives the
unfolded detector's detections (randomized norm statistics, frozen and FrozenStatsBN layers)."""

import copy
import os

import pytest
import torch
from torch import nn

from detectron2.config import instantiate
from detectron2.layers import FrozenBatchNorm2d

from conftest import REPO_ROOT, randomize_batchnorm
from detection_checks import assert_same_detections
from rsb_backbone.export import fold_norm_into_conv, fold_norms, to_deployment_form
from rsb_backbone.config import load_config_with_overrides
from rsb_backbone.inference import set_score_threshold

DETECTORS = ["faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet"]


def _randomized_norm(norm: nn.Module, channels: int) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    norm.weight.data = 0.5 + torch.rand(channels, generator=g)
    norm.bias.data = torch.randn(channels, generator=g)
    norm.running_mean.data = torch.randn(channels, generator=g)
    norm.running_var.data = 0.5 + torch.rand(channels, generator=g)
    return norm


@pytest.mark.parametrize("norm_type", ["FrozenBN", "BN"])
@pytest.mark.parametrize("bias", [False, True])
def test_folded_conv_equals_conv_then_norm(norm_type, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, padding=1, bias=bias)
    norm = _randomized_norm(FrozenBatchNorm2d(6) if norm_type == "FrozenBN" else nn.BatchNorm2d(6), 6).eval()
    x = torch.randn(2, 4, 9, 7)
    with torch.no_grad():
        expected = norm(conv(x))
        fold_norm_into_conv(conv, norm)
        assert torch.allclose(conv(x), expected, atol=1e-5, rtol=1e-5)


def test_training_mode_batchnorm_is_refused():
    block = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)).train()
    with pytest.raises(ValueError, match=r"1 \(BatchNorm2d\) is in training mode"):
        fold_norms(block)


def _detector(arch: str) -> nn.Module:
    cfg = load_config_with_overrides(
        os.path.join(REPO_ROOT, "configs", "shapes", f"{arch}_rsb_r50_fpn_shapes.py"),
        ["model.backbone.bottom_up.model_name=resnet18"]
        # CPU time: 100 proposals per image at test (COCO: 1000)
        + ([] if arch == "retinanet" else ["model.proposal_generator.post_nms_topk=[1000,100]"]),
    )
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    randomize_batchnorm(model)  # FrozenStatsBN layers (BatchNorm2d in eval mode)
    with torch.no_grad():  # and the frozen stem's FrozenBatchNorm2d
        for m in model.modules():
            if isinstance(m, FrozenBatchNorm2d):
                _randomized_norm(m, m.num_features)
    set_score_threshold(model, 0.0)
    return model.eval()


def _detections(model, image):
    """Detections in input coordinates; mask models give their mask probabilities (M x M maps),
    which random heads leave near 0.5, where a binary mask would flip on rounding."""
    with torch.no_grad():
        if hasattr(model, "roi_heads"):
            return model.inference([{"image": image}], do_postprocess=False)[0]
        return model([{"image": image}])[0]["instances"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", DETECTORS)
def test_folded_detector_gives_the_same_detections(arch):
    model = _detector(arch)
    trunk_norms = sum(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in model.backbone.modules())
    folded = copy.deepcopy(model)
    assert fold_norms(folded) == trunk_norms
    assert not any(isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)) for m in folded.modules())
    channels_last = to_deployment_form(copy.deepcopy(model), channels_last=True)
    torch.manual_seed(1)
    for height, width in [(128, 96)]:
        image = torch.rand(3, height, width) * 255
        expected = _detections(model, image)
        n = assert_same_detections(expected, _detections(folded, image), f"{arch} folded")
        assert_same_detections(expected, _detections(channels_last, image), f"{arch} channels-last")
        assert n > 0
