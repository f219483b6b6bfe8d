"""Publishing a checkpoint: only model tensors and model metadata, hash-named, every format loads.

The end-to-end checks (a trained model's AP from its checkpoint and from its published file) are
in ``test_model_metadata.py``, which shares one training run.
"""

import hashlib
import importlib.util
import logging
import os

import pytest
import torch
from safetensors import safe_open

from conftest import REPO_ROOT
from rsb_backbone.checkpoint import AtomicCheckpointer
from rsb_backbone.inference import load_detector_checkpoint
from rsb_backbone.checkpoint.model_metadata import read_model_metadata
from rsb_backbone.checkpoint.publishing import publish_checkpoint, published_file_name
from rsb_backbone.checkpoint.tensor_files import WeightFileError, load_tensor_file
from test_mmdet_conversion import (  # noqa: F401 (cached_models is a fixture)
    NUM_CLASSES,
    cached_models,
    save_mmdet_checkpoint,
    synthesize_state_dict,
)

METADATA = {
    "thing_classes": ["box", "ring", "wedge"],
    "thing_dataset_id_to_contiguous_id": {"3": 0, "7": 1, "42": 2},
}


class TinyDetector(torch.nn.Module):
    """Two layers and an integer buffer: the kinds of tensors a detector state dict holds."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x):
        return self.bn(self.conv(x))


def training_checkpoint(path, *, metadata=METADATA):
    """A file laid out like train_net.py's checkpoints: model, optimizer, scheduler, iteration."""
    torch.manual_seed(0)
    model = TinyDetector()
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.randn(1, 3, 8, 8)).sum().backward()
    optimizer.step()
    content = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": {"last_epoch": 1},
        "iteration": 1,
    }
    if metadata is not None:
        content["metadata"] = metadata
    torch.save(content, str(path))
    return model


def _load_cli():
    path = os.path.join(REPO_ROOT, "projects", "publish_model", "publish_model.py")
    spec = importlib.util.spec_from_file_location("publish_model", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_published_pth_holds_only_model_tensors_and_metadata(tmp_path):
    model = training_checkpoint(tmp_path / "model_final.pth")
    published = publish_checkpoint(tmp_path / "model_final.pth", str(tmp_path / "out" / "tiny.pth"))
    with open(published.path, "rb") as f:
        sha256 = hashlib.sha256(f.read()).hexdigest()
    assert published.path == str(tmp_path / "out" / f"tiny-{sha256[:8]}.pth")
    assert published.sha256 == sha256 and published.num_bytes == os.path.getsize(published.path)
    content = torch.load(published.path, weights_only=True)
    assert set(content) == {"model", "metadata"}
    assert content["metadata"] == METADATA
    assert set(content["model"]) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.equal(content["model"][key], value), key
    assert os.path.getsize(published.path) < os.path.getsize(tmp_path / "model_final.pth")


def test_published_file_name_is_stable_and_keeps_the_stem(tmp_path):
    training_checkpoint(tmp_path / "model_final.pth")
    first = publish_checkpoint(tmp_path / "model_final.pth", str(tmp_path / "a.pth"))
    again = publish_checkpoint(tmp_path / "model_final.pth", str(tmp_path / "a"))
    assert first.path == again.path  # same content, same hash, same name
    assert (
        published_file_name("x/model.safetensors", "0123456789ab", safetensors=True)
        == "x/model-01234567.safetensors"
    )
    assert published_file_name("x/model.v2", "0123456789ab", safetensors=False) == "x/model.v2-01234567.pth"


def test_fp16_safetensors_carry_metadata_in_the_header(tmp_path):
    model = training_checkpoint(tmp_path / "model_final.pth")
    published = publish_checkpoint(
        tmp_path / "model_final.pth", str(tmp_path / "tiny"), fp16=True, safetensors=True
    )
    assert published.path.endswith(".safetensors") and f"-{published.sha256[:8]}." in published.path
    with safe_open(published.path, framework="pt") as f:
        assert set(f.metadata()) == {"metadata"}
        assert f.get_tensor("conv.weight").dtype == torch.float16
        assert f.get_tensor("bn.num_batches_tracked").dtype == torch.int64  # integers stay
        assert set(f.keys()) == set(model.state_dict())
    assert read_model_metadata(published.path) == {
        "thing_classes": ["box", "ring", "wedge"],
        "thing_dataset_id_to_contiguous_id": {3: 0, 7: 1, 42: 2},
    }


@pytest.mark.parametrize(
    "options", [{}, {"fp16": True}, {"safetensors": True}, {"fp16": True, "safetensors": True}]
)
def test_every_published_format_loads_tensors_only(options, tmp_path):
    model = training_checkpoint(tmp_path / "model_final.pth")
    published = publish_checkpoint(tmp_path / "model_final.pth", str(tmp_path / "tiny"), **options)
    tolerance = {"atol": 1e-3, "rtol": 1e-3} if options.get("fp16") else {"atol": 0, "rtol": 0}

    target = TinyDetector()  # the predictors' and yacs evaluation's loader
    stored = load_detector_checkpoint(target, published.path)
    assert stored["thing_classes"] == METADATA["thing_classes"]
    for key, value in model.state_dict().items():
        torch.testing.assert_close(target.state_dict()[key], value, **tolerance)
        assert target.state_dict()[key].dtype == value.dtype  # cast back to the model's precision

    target = TinyDetector()  # train_net.py's loader (train.init_checkpoint, --eval-only)
    AtomicCheckpointer(target).load(published.path)
    torch.testing.assert_close(target.conv.weight, model.conv.weight, **tolerance)


@pytest.mark.parametrize("safetensors", [False, True])
def test_a_published_file_publishes_again_unchanged(safetensors, tmp_path):
    training_checkpoint(tmp_path / "model_final.pth")
    first = publish_checkpoint(tmp_path / "model_final.pth", str(tmp_path / "a"), safetensors=safetensors)
    for again in range(3):  # the same bytes every time
        second = publish_checkpoint(first.path, str(tmp_path / f"b{again}"), safetensors=safetensors)
        assert second.sha256 == first.sha256 and second.metadata == first.metadata


def test_checkpoint_without_metadata_publishes_without(tmp_path):
    training_checkpoint(tmp_path / "model_final.pth", metadata=None)
    published = publish_checkpoint(tmp_path / "model_final.pth", str(tmp_path / "tiny"))
    assert published.metadata is None
    assert set(torch.load(published.path, weights_only=True)) == {"model"}
    assert load_detector_checkpoint(TinyDetector(), published.path) is None


def test_refused_inputs_are_named(tmp_path):
    torch.save({"state_dict": {"a": torch.zeros(1)}, "meta": {}}, str(tmp_path / "mmdet.pth"))
    with pytest.raises(
        WeightFileError, match=r"mmdet.pth: has a 'state_dict' entry.*convert_mmdet_checkpoint"
    ):
        publish_checkpoint(tmp_path / "mmdet.pth", str(tmp_path / "out"))
    torch.save({"model": {"a": torch.zeros(1), "b": [1, 2]}}, str(tmp_path / "odd.pth"))
    with pytest.raises(WeightFileError, match=r"odd.pth: 'model' entry 'b' is a list, not a tensor"):
        publish_checkpoint(tmp_path / "odd.pth", str(tmp_path / "out"))
    torch.save(
        {"model": {"a": torch.zeros(1)}, "metadata": {"thing_classes": "box"}}, str(tmp_path / "meta.pth")
    )
    with pytest.raises(ValueError, match=r"meta.pth: metadata: model metadata thing_classes = 'box'"):
        publish_checkpoint(tmp_path / "meta.pth", str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        publish_checkpoint(tmp_path / "missing.pth", str(tmp_path / "out"))
    assert not [p for p in os.listdir(tmp_path) if p.startswith("out")]


def test_command_line(tmp_path, caplog):
    cli = _load_cli()
    training_checkpoint(tmp_path / "model_final.pth")
    with caplog.at_level(logging.INFO):
        assert (
            cli.main([str(tmp_path / "model_final.pth"), str(tmp_path / "pub" / "tiny.pth"), "--fp16"]) == 0
        )
    written = os.listdir(tmp_path / "pub")
    assert len(written) == 1 and written[0].startswith("tiny-") and written[0].endswith(".pth")
    assert f"pub/{written[0]}: 7 tensors, 3 class names" in caplog.text
    with caplog.at_level(logging.ERROR):
        assert cli.main([str(tmp_path / "nothing.pth"), str(tmp_path / "x.pth")]) == 2
    assert "nothing.pth: weight file does not exist" in caplog.text


# ---- converted mmdetection checkpoints ------------------------------------------------------------


def test_converter_output_carries_class_names_and_publishes(cached_models, tmp_path):
    """convert -> publish -> both predictors: the mmdetection checkpoint's class names."""
    from rsb_backbone.inference import LazyConfigPredictor, build_default_predictor, get_rsb_cfg
    from rsb_backbone.mmdet_conversion import convert_mmdet_checkpoint

    source = save_mmdet_checkpoint(tmp_path / "mmdet.pth", synthesize_state_dict("faster_rcnn"))
    convert_mmdet_checkpoint(source, str(tmp_path / "converted.pth"))
    names = [f"class{i}" for i in range(NUM_CLASSES)]  # save_mmdet_checkpoint's meta["CLASSES"]
    assert read_model_metadata(str(tmp_path / "converted.pth")) == {"thing_classes": names}

    for options in ({}, {"safetensors": True}):
        published = publish_checkpoint(tmp_path / "converted.pth", str(tmp_path / "faster"), **options)
        content = load_tensor_file(published.path)
        assert set(content) == (
            {"model", "metadata"} if not options else set(cached_models("faster_rcnn").state_dict())
        )
        predictor = build_default_predictor(get_rsb_cfg("faster_rcnn", checkpoint=published.path))
        assert predictor.metadata.thing_classes == names  # not coco_2017_val's (DATASETS.TEST)
    predictor = LazyConfigPredictor(
        os.path.join(REPO_ROOT, "configs", "COCO", "faster_rcnn_rsb_r50_fpn_1x.py"), published.path
    )
    assert predictor.metadata.thing_classes == names
    for key, value in cached_models("faster_rcnn").state_dict().items():
        assert torch.equal(predictor.model.state_dict()[key], value), key


def test_converter_gives_coco_category_ids_for_coco_classes(cached_models, tmp_path):
    from detectron2.data import MetadataCatalog

    from rsb_backbone.mmdet_conversion import convert_mmdet_checkpoint

    coco = MetadataCatalog.get("coco_2017_val")
    state_dict = synthesize_state_dict("faster_rcnn")
    stored = {}
    # COCO's 80 names in mmdetection's CocoDataset.CLASSES order, other names, none.
    for name, classes in (("coco", coco.thing_classes), ("other", ("cat", "dog")), ("none", ())):
        source = save_mmdet_checkpoint(tmp_path / f"{name}_mmdet.pth", state_dict, classes)
        convert_mmdet_checkpoint(source, str(tmp_path / f"{name}.pth"))
        stored[name] = read_model_metadata(str(tmp_path / f"{name}.pth"))
    assert stored["coco"]["thing_classes"] == coco.thing_classes
    assert stored["coco"]["thing_dataset_id_to_contiguous_id"] == coco.thing_dataset_id_to_contiguous_id
    assert stored["other"] == {"thing_classes": ["cat", "dog"]}
    assert stored["none"] is None
