"""Every weight source loads exactly; bad files fail with messages naming them."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from rsb_backbone import TimmResNet, WeightFileError

from conftest import REPO_ROOT, CreatesFileWhenUnpickled


def assert_loaded_exactly(model, reference):
    loaded = model.state_dict()
    compared = 0
    for key, value in reference.items():
        if key.startswith("fc.") or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(loaded[key], value), key
        compared += 1
    # resnet50: 320 entries - fc.weight, fc.bias - 53 BatchNorm num_batches_tracked counters
    assert compared == 265


def test_timm_safetensors_file(timm_resnet50_state_dict, tmp_path):
    path = tmp_path / "resnet50.safetensors"
    save_file({k: v.contiguous() for k, v in timm_resnet50_state_dict.items()}, str(path))
    model = TimmResNet(weights=str(path), norm="BN")
    assert_loaded_exactly(model, timm_resnet50_state_dict)


@pytest.mark.parametrize("prefix", ["", "module."])  # "module.": saved from DistributedDataParallel
def test_timm_pth_file(timm_resnet50_state_dict, tmp_path, prefix):
    path = tmp_path / "resnet50.pth"
    torch.save({prefix + k: v for k, v in timm_resnet50_state_dict.items()}, path)
    assert_loaded_exactly(TimmResNet(weights=str(path), norm="BN"), timm_resnet50_state_dict)


def test_mmpretrain_checkpoint(timm_resnet50_state_dict, tmp_path):
    """mmpretrain/mmcls RSB layout: tensors under state_dict, backbone. prefix, head.fc classifier."""
    state_dict = {f"backbone.{k}": v for k, v in timm_resnet50_state_dict.items() if not k.startswith("fc.")}
    state_dict["head.fc.weight"] = timm_resnet50_state_dict["fc.weight"]
    state_dict["head.fc.bias"] = timm_resnet50_state_dict["fc.bias"]
    path = tmp_path / "resnet50_8xb256-rsb-a1-600e_in1k.pth"
    torch.save({"meta": {"epoch": 600, "mmcls_version": "0.19.0"}, "state_dict": state_dict}, path)
    assert_loaded_exactly(TimmResNet(weights=str(path), norm="BN"), timm_resnet50_state_dict)


def test_torchvision_state_dict(tmp_path):
    import torchvision

    from conftest import randomize_batchnorm

    reference = torchvision.models.resnet50(weights=None)
    randomize_batchnorm(reference, seed=3)
    path = tmp_path / "resnet50-torchvision.pth"
    torch.save(reference.state_dict(), path)
    model = TimmResNet(weights=str(path), norm="FrozenBN").eval()
    assert_loaded_exactly(TimmResNet(weights=str(path), norm="BN"), reference.state_dict())
    # Same function as torchvision's own trunk.
    reference.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = reference.layer4(reference.layer3(reference.layer2(reference.layer1(
            reference.maxpool(reference.relu(reference.bn1(reference.conv1(x))))))))
        torch.testing.assert_close(model(x)["res5"], expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_hub_name_loads_from_local_hugging_face_cache(timm_resnet50_state_dict, tmp_path):
    """The real hub code path (huggingface_hub.hf_hub_download), served offline from its cache."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = tmp_path / "hub" / "models--timm--resnet50.a1_in1k"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    save_file({k: v.contiguous() for k, v in timm_resnet50_state_dict.items()}, str(snapshot / "model.safetensors"))
    reference = tmp_path / "reference.pth"
    torch.save(timm_resnet50_state_dict, reference)

    script = textwrap.dedent(
        f"""
        import torch
        from rsb_backbone import TimmResNet
        model = TimmResNet(weights="resnet50.a1_in1k", norm="BN")
        reference = torch.load({str(reference)!r}, weights_only=True)
        state = model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in reference.items()
                   if not k.startswith("fc.") and not k.endswith("num_batches_tracked"))
        print("HUB-OK")
        """
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "hub"), HF_HUB_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert "HUB-OK" in result.stdout, result.stderr[-2000:]

    # Without a cached copy, the error says what to do.
    env["HF_HUB_CACHE"] = str(tmp_path / "empty-hub")
    script = "from rsb_backbone import TimmResNet; TimmResNet(weights='resnet50.a2_in1k')"
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=REPO_ROOT, capture_output=True, text=True)
    assert result.returncode != 0
    assert "resnet50.a2_in1k" in result.stderr and "no cached copy" in result.stderr


def test_unknown_name_is_neither_file_nor_timm_tag():
    with pytest.raises(ValueError, match="resnet50.b9_in1k"):
        TimmResNet(weights="resnet50.b9_in1k")


def test_missing_file_names_it(tmp_path):
    path = tmp_path / "nowhere" / "weights.pth"
    with pytest.raises(FileNotFoundError, match="weights.pth"):
        TimmResNet(weights=str(path))


def test_truncated_file_names_it(timm_resnet50_state_dict, tmp_path):
    path = tmp_path / "truncated.pth"
    torch.save(timm_resnet50_state_dict, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match="truncated.pth"):
        TimmResNet(weights=str(path))


def test_truncated_safetensors_names_it(timm_resnet50_state_dict, tmp_path):
    path = tmp_path / "truncated.safetensors"
    save_file({k: v.contiguous() for k, v in timm_resnet50_state_dict.items()}, str(path))
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(WeightFileError, match="truncated.safetensors"):
        TimmResNet(weights=str(path))


def test_foreign_checkpoint_names_it(tmp_path):
    path = tmp_path / "detector.pth"
    torch.save({"model": {"roi_heads.box_predictor.cls_score.weight": torch.zeros(81, 1024)}}, path)
    with pytest.raises(WeightFileError, match="detector.pth.*no key matches"):
        TimmResNet(weights=str(path))


def test_file_without_a_state_dict_names_it(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(WeightFileError, match="list.pth: expected a state dict of tensors"):
        TimmResNet(weights=str(path))


def test_other_architecture_fails_on_shapes(tmp_path):
    import timm

    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    with pytest.raises(WeightFileError, match="resnet18.pth.*wrong shape"):
        TimmResNet(model_name="resnet50", weights=str(path))


def test_incomplete_checkpoint_names_a_missing_key(timm_resnet50_state_dict, tmp_path):
    partial = {k: v for k, v in timm_resnet50_state_dict.items() if not k.startswith("layer4.")}
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(WeightFileError, match="partial.pth.*missing.*layer4"):
        TimmResNet(weights=str(path))


def test_pickle_that_runs_code_is_refused_and_does_not_run(tmp_path):
    marker = tmp_path / "pwned.txt"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(1)}, "payload": CreatesFileWhenUnpickled(str(marker))}, path)
    assert not marker.exists()
    with pytest.raises(WeightFileError, match="evil.pth.*refused"):
        TimmResNet(weights=str(path))
    assert not marker.exists(), "loading the checkpoint ran code"


def test_plain_pickle_files_are_refused(tmp_path):
    path = tmp_path / "R-50.pkl"
    path.write_bytes(b"\x80\x04N.")
    with pytest.raises(WeightFileError, match="R-50.pkl"):
        TimmResNet(weights=str(path))
