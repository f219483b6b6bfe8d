"""TimmResNet computes the same function as Detectron2's own ResNet-50 with the same weights."""

import re

import torch

from detectron2.modeling.backbone import BasicStem, ResNet

from rsb_backbone import TimmResNet


def timm_to_detectron2_names(state_dict):
    """Rename timm ResNet keys to Detectron2's ResNet layout (written independently here)."""
    renamed = {}
    for key, value in state_dict.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        new = re.sub(r"^conv1\.", "stem.conv1.", key)
        new = re.sub(r"^bn1\.", "stem.conv1.norm.", new)
        new = re.sub(r"^layer(\d)\.", lambda m: f"res{int(m.group(1)) + 1}.", new)
        new = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", new)
        new = new.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
        renamed[new] = value
    return renamed


def test_same_outputs_as_detectron2_resnet50(timm_resnet50_state_dict, tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(timm_resnet50_state_dict, path)
    ours = TimmResNet(model_name="resnet50", weights=str(path), norm="FrozenBN").eval()

    theirs = ResNet(
        stem=BasicStem(in_channels=3, out_channels=64, norm="FrozenBN"),
        # torchvision/timm ResNets stride on the 3x3 conv, hence stride_in_1x1=False
        stages=ResNet.make_default_stages(depth=50, stride_in_1x1=False, norm="FrozenBN"),
        out_features=["res2", "res3", "res4", "res5"],
    ).eval()
    incompatible = theirs.load_state_dict(timm_to_detectron2_names(timm_resnet50_state_dict), strict=True)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys

    torch.manual_seed(1)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        out_ours, out_theirs = ours(x), theirs(x)
    assert out_ours.keys() == out_theirs.keys()
    for name in out_ours:
        assert out_ours[name].shape == out_theirs[name].shape
        torch.testing.assert_close(out_ours[name], out_theirs[name], rtol=1e-4, atol=1e-4)
    assert ours.output_shape() == theirs.output_shape()
