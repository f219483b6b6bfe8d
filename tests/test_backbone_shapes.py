"""TimmResNet outputs: names, channels, strides and spatial sizes."""

import math

import pytest
import torch

from rsb_backbone import STAGE_NAMES, TimmResNet

EXPECTED_CHANNELS = {"res2": 256, "res3": 512, "res4": 1024, "res5": 2048}
EXPECTED_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


@pytest.fixture(scope="module")
def resnet50():
    return TimmResNet(model_name="resnet50").eval()


def test_output_shape_declares_channels_and_strides(resnet50):
    shapes = resnet50.output_shape()
    assert list(shapes) == list(STAGE_NAMES)
    assert {k: s.channels for k, s in shapes.items()} == EXPECTED_CHANNELS
    assert {k: s.stride for k, s in shapes.items()} == EXPECTED_STRIDES


@pytest.mark.parametrize("height,width", [(64, 64), (100, 130), (97, 61), (224, 160)])
def test_feature_maps_match_declared_shapes(resnet50, height, width):
    with torch.no_grad():
        outputs = resnet50(torch.randn(2, 3, height, width))
    assert list(outputs) == list(STAGE_NAMES)
    for name, spec in resnet50.output_shape().items():
        n, c, h, w = outputs[name].shape
        assert (n, c) == (2, spec.channels)
        # Each stride-2 layer (conv, pool) rounds up: ceil(size / stride) for a ResNet.
        assert (h, w) == (math.ceil(height / spec.stride), math.ceil(width / spec.stride)), name


def test_out_features_subset_drops_later_stages():
    model = TimmResNet(model_name="resnet50", out_features=["res3", "res4"])
    assert list(model.output_shape()) == ["res3", "res4"]
    assert not hasattr(model, "layer4")
    outputs = model(torch.randn(1, 3, 64, 64))
    assert list(outputs) == ["res3", "res4"]


def test_other_resnet_family_members_take_channels_from_timm():
    model = TimmResNet(model_name="resnet18", out_features=["res4", "res5"])
    assert {k: s.channels for k, s in model.output_shape().items()} == {"res4": 256, "res5": 512}
    assert model(torch.randn(1, 3, 64, 64))["res5"].shape == (1, 512, 2, 2)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(out_features=["res6"]), "out_features"),
        (dict(out_features=[]), "out_features"),
        (dict(freeze_at=6), "freeze_at"),
        (dict(norm="GN"), "norm='GN'"),
        (dict(model_name="vit_base_patch16_224"), "ResNet family"),
        (dict(model_name="no_such_model"), "no_such_model"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TimmResNet(**kwargs)
