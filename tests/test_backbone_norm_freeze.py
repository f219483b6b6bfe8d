"""freeze_at and the norm modes behave as documented."""

import pytest
import torch
from torch import nn

from detectron2.layers import FrozenBatchNorm2d

from rsb_backbone import TimmResNet

from conftest import randomize_batchnorm

# Modules belonging to each freeze level: 1 = stem, 2 = + res2 (layer1), ...
GROUPS = [("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",)]


def _params_of(model, names):
    return [p for n in names for p in getattr(model, n).parameters()]


def _batchnorms_of(model, names):
    return [m for n in names for m in getattr(model, n).modules()]


@pytest.mark.parametrize("freeze_at", [0, 1, 2, 3, 5])
def test_freeze_at_counts_stem_then_stages(freeze_at):
    model = TimmResNet(model_name="resnet18", freeze_at=freeze_at, norm="BN")
    for level, names in enumerate(GROUPS, start=1):
        frozen = level <= freeze_at
        params = _params_of(model, names)
        assert params, names
        assert all(p.requires_grad != frozen for p in params), (freeze_at, names)
        modules = _batchnorms_of(model, names)
        assert any(isinstance(m, FrozenBatchNorm2d) for m in modules) == frozen
        assert any(isinstance(m, nn.BatchNorm2d) for m in modules) != frozen


def test_frozen_bn_mode_freezes_every_norm_layer():
    model = TimmResNet(model_name="resnet18", freeze_at=0, norm="FrozenBN")
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    assert sum(isinstance(m, FrozenBatchNorm2d) for m in model.modules()) > 10
    # Convolutions still train.
    assert model.layer1[0].conv1.weight.requires_grad


def test_sync_bn_mode_converts_to_sync_batchnorm():
    model = TimmResNet(model_name="resnet18", freeze_at=2, norm="SyncBN")
    assert isinstance(model.layer2[0].bn1, nn.SyncBatchNorm)
    assert isinstance(model.layer1[0].bn1, FrozenBatchNorm2d)


def _running_stats(model):
    return {
        n: b.clone() for n, b in model.named_buffers() if "running_" in n or "num_batches" in n
    }


def test_bn_mode_updates_running_statistics_in_training():
    model = TimmResNet(model_name="resnet18", freeze_at=0, norm="BN").train()
    before = _running_stats(model)
    model(torch.randn(2, 3, 64, 64))
    after = _running_stats(model)
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_frozen_stats_bn_keeps_statistics_and_trains_affine():
    model = TimmResNet(model_name="resnet50", freeze_at=2, norm="FrozenStatsBN")
    randomize_batchnorm(model)
    model.train()
    assert model.training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns), "BatchNorm layers must stay in eval mode"
    before = _running_stats(model)
    for _ in range(2):
        out = model(torch.randn(2, 3, 64, 64))
        sum(o.mean() for o in out.values()).backward()
    after = _running_stats(model)
    assert all(torch.equal(before[k], after[k]) for k in before), "running statistics changed"
    bn = model.layer3[0].bn2
    assert isinstance(bn, nn.BatchNorm2d)
    assert bn.weight.requires_grad and bn.weight.grad is not None and bn.weight.grad.abs().sum() > 0
    assert bn.bias.grad is not None and bn.bias.grad.abs().sum() > 0
    # train() again (as the trainer does) must not bring batch statistics back.
    model.train()
    assert all(not m.training for m in bns)


def test_frozen_stats_bn_output_uses_running_statistics():
    """In training mode the RSB mode computes exactly what eval mode computes."""
    model = TimmResNet(model_name="resnet18", freeze_at=0, norm="FrozenStatsBN")
    randomize_batchnorm(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        train_out = model.train()(x)
        eval_out = model.eval()(x)
    for k in train_out:
        torch.testing.assert_close(train_out[k], eval_out[k])


