"""Class names and category ids travel with the trained model.

The slow tests share one brief ``train_net.py`` run (Faster R-CNN, ResNet-18 trunk, 2 iterations)
on a COCO-format set registered with ``--register-coco`` whose classes differ from the shapes
set's: the generated shapes re-labelled as "ring" (id 7), "box" (id 3) and "wedge" (id 42). A
fresh process that registers nothing then predicts from the saved ``config.yaml``, the yacs twin
and the published files.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file

from detectron2.config import LazyConfig
from detectron2.data import MetadataCatalog
from detectron2.data.catalog import Metadata

from conftest import REPO_ROOT
from rsb_backbone.checkpoint import AtomicCheckpointer
from rsb_backbone.checkpoint.model_metadata import (
    ModelMetadataState,
    config_model_metadata,
    detectron2_metadata,
    metadata_to_safetensors_header,
    parse_model_metadata,
    read_model_metadata,
    storable_model_metadata,
    training_model_metadata,
)
from rsb_backbone.checkpoint.publishing import publish_checkpoint
from train_net_runner import FAST_OVERRIDES, TRAIN_NET

# shapes category id -> (new id, new name): non-contiguous ids, names unlike the shapes set's.
RELABEL = {1: (7, "ring"), 2: (3, "box"), 3: (42, "wedge")}
CLASSES = ["box", "ring", "wedge"]  # sorted by category id: 3, 7, 42
ID_MAP = {3: 0, 7: 1, 42: 2}
SHAPES_CLASSES = ["circle", "square", "triangle"]
TRAIN_NAME, VAL_NAME = "relabelled_train", "relabelled_val"
TRUNK = "resnet18"
MIN_SIZE, MAX_SIZE = 128, 192  # FAST_OVERRIDES' test resize


# ---- the metadata format ------------------------------------------------------------------------


def test_stored_form_survives_json_and_yaml(tmp_path):
    parsed = {"thing_classes": CLASSES, "thing_dataset_id_to_contiguous_id": {7: 1, 42: 2, 3: 0}}
    stored = storable_model_metadata(parsed)
    assert stored == {
        "thing_classes": CLASSES,
        "thing_dataset_id_to_contiguous_id": {"3": 0, "7": 1, "42": 2},
    }
    assert parse_model_metadata(json.loads(json.dumps(stored)), "json") == parsed
    cfg = OmegaConf.create({"metadata": stored})
    assert config_model_metadata(cfg) == parsed
    assert parse_model_metadata(OmegaConf.create(OmegaConf.to_yaml(cfg)).metadata, "yaml") == parsed
    header = metadata_to_safetensors_header(parsed)
    save_file({"w": torch.zeros(1)}, str(tmp_path / "x.safetensors"), metadata=header)
    assert read_model_metadata(str(tmp_path / "x.safetensors")) == parsed
    assert parse_model_metadata({"thing_classes": ["a"]}, "names only") == {"thing_classes": ["a"]}
    assert parse_model_metadata(None, "none") is None and parse_model_metadata({}, "empty") is None
    assert metadata_to_safetensors_header(None) is None


@pytest.mark.parametrize(
    "raw, message",
    [
        (["box"], r"ckpt.pth: model metadata is a list; expected a dict"),
        (
            {"thing_classes": []},
            r"ckpt.pth: model metadata thing_classes = \[\]; expected a list of class names",
        ),
        (
            {"thing_classes": ["a"], "thing_dataset_id_to_contiguous_id": {"x": 0}},
            r"has the key 'x'; expected a category id",
        ),
        (
            {"thing_classes": ["a"], "thing_dataset_id_to_contiguous_id": {"1": "0"}},
            r"\['1'\] = '0'; expected a class index",
        ),
        (
            {"thing_classes": ["a", "b"], "thing_dataset_id_to_contiguous_id": {"1": 0, "2": 0}},
            r"indices \[0, 0\]; expected each of 0..1 once",
        ),
    ],
)
def test_malformed_metadata_is_named(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_model_metadata(raw, "ckpt.pth")


def test_collected_from_the_catalog():
    name = "model_metadata_test_catalog"
    MetadataCatalog.get(name).set(
        thing_classes=CLASSES, thing_dataset_id_to_contiguous_id={42: 2, 3: 0, 7: 1}
    )
    cfg = OmegaConf.create({"dataloader": {"train": {"dataset": {"names": [name, "rsb_shapes_train"]}}}})
    assert training_model_metadata(cfg) == storable_model_metadata(
        {"thing_classes": CLASSES, "thing_dataset_id_to_contiguous_id": ID_MAP}
    )
    cfg.dataloader.train.dataset.names = "model_metadata_test_unknown"
    assert training_model_metadata(cfg) is None


def test_a_data_set_without_category_ids_stores_class_names_only():
    # A Metadata with an empty id map (as Metadata.as_dict() gives for such a set) must store
    # something that reads back, not an id map that parse_model_metadata would refuse.
    stored = storable_model_metadata({"thing_classes": CLASSES, "thing_dataset_id_to_contiguous_id": {}})
    assert stored == {"thing_classes": CLASSES}
    assert parse_model_metadata(json.loads(json.dumps(stored)), "model.json") == stored


def test_stored_metadata_wins_and_nothing_stored_keeps_the_data_set():
    fallback = Metadata(name="rsb_shapes_val", thing_classes=SHAPES_CLASSES)
    assert detectron2_metadata(None, fallback) is fallback
    assert detectron2_metadata(None, None) is None
    applied = detectron2_metadata(
        {"thing_classes": CLASSES, "thing_dataset_id_to_contiguous_id": ID_MAP}, fallback, name="m.pth"
    )
    assert applied.thing_classes == CLASSES and applied.thing_dataset_id_to_contiguous_id == ID_MAP
    assert applied.name == "m.pth" and fallback.thing_classes == SHAPES_CLASSES  # not changed


def test_every_checkpoint_carries_the_metadata(tmp_path):
    model = torch.nn.Linear(2, 2)
    state = ModelMetadataState({"thing_classes": CLASSES, "thing_dataset_id_to_contiguous_id": ID_MAP})
    checkpointer = AtomicCheckpointer(model, str(tmp_path), metadata=state)
    checkpointer.save("model_0000004", iteration=4)  # what PeriodicCheckpointer passes
    saved = torch.load(tmp_path / "model_0000004.pth", weights_only=True)
    assert saved["metadata"] == storable_model_metadata(state.metadata) and saved["iteration"] == 4
    checkpointer.resume_or_load("", resume=True)  # resuming reads it back without complaint


# ---- one brief training on re-labelled data -----------------------------------------------------


def _relabel(json_file, out_file):
    with open(json_file) as f:
        coco = json.load(f)
    coco["categories"] = [
        {"id": RELABEL[c["id"]][0], "name": RELABEL[c["id"]][1]} for c in coco["categories"]
    ]
    for ann in coco["annotations"]:
        ann["category_id"] = RELABEL[ann["category_id"]][0]
    with open(out_file, "w") as f:
        json.dump(coco, f)
    return str(out_file)


@pytest.fixture(scope="module")
def relabelled(tmp_path_factory):
    """4 train and 2 val shapes images, with the re-labelled categories."""
    from rsb_backbone.data.datasets.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("relabelled")
    paths = generate_shapes_dataset(
        str(root / "shapes"), num_train=4, num_val=2, min_size=128, max_size=176, seed=5
    )
    for split in ("train", "val"):
        paths[split]["json_file"] = _relabel(paths[split]["json_file"], root / f"{split}_relabelled.json")
    return paths


def _register_args(paths):
    return [
        "--register-coco", f"{TRAIN_NAME}={paths['train']['json_file']}:{paths['train']['image_root']}",
        "--register-coco", f"{VAL_NAME}={paths['val']['json_file']}:{paths['val']['image_root']}",
    ]  # fmt: skip


def shapes_config(suffix=".py"):
    if suffix == ".yaml":
        return os.path.join(REPO_ROOT, "configs", "yacs", "shapes", "faster_rcnn_rsb_r50_fpn_shapes.yaml")
    return os.path.join(REPO_ROOT, "configs", "shapes", "faster_rcnn_rsb_r50_fpn_shapes.py")


LAZY_OPTS = [
    f"model.backbone.bottom_up.model_name={TRUNK}",
    f"dataloader.test.mapper.augmentations.0.short_edge_length={MIN_SIZE}",
    f"dataloader.test.mapper.augmentations.0.max_size={MAX_SIZE}",
]
YACS_OPTS = [
    "MODEL.RSB.MODEL_NAME", TRUNK, "INPUT.MIN_SIZE_TEST", str(MIN_SIZE), "INPUT.MAX_SIZE_TEST", str(MAX_SIZE),
]  # fmt: skip


@pytest.fixture(scope="module")
def trained(relabelled, tmp_path_factory):
    """train_net.py output folder after 2 iterations (a checkpoint after each) on the re-labelled set."""
    output_dir = str(tmp_path_factory.mktemp("relabelled_train") / "out")
    args = [
        "--config-file", shapes_config(), *_register_args(relabelled),
        f"dataloader.train.dataset.names={TRAIN_NAME}", f"dataloader.test.dataset.names={VAL_NAME}",
        *FAST_OVERRIDES, f"model.backbone.bottom_up.model_name={TRUNK}",
        "model.roi_heads.batch_size_per_image=32",
        "train.max_iter=2", "train.eval_period=0", "train.checkpointer.period=1", f"train.output_dir={output_dir}",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, TRAIN_NET, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"train_net.py failed:\n{result.stderr[-4000:]}"
    return output_dir


@pytest.fixture(scope="module")
def published(trained, tmp_path_factory):
    """The final checkpoint published as fp32 .pth, fp32 .safetensors and fp16 .safetensors."""
    out = tmp_path_factory.mktemp("published")
    final = os.path.join(trained, "model_final.pth")
    return {
        "pth": publish_checkpoint(final, str(out / "faster_rcnn_relabelled.pth")).path,
        "safetensors": publish_checkpoint(final, str(out / "faster_rcnn_relabelled"), safetensors=True).path,
        "fp16": publish_checkpoint(
            final, str(out / "faster_rcnn_relabelled_fp16"), fp16=True, safetensors=True
        ).path,
    }


@pytest.mark.slow
def test_checkpoints_and_saved_config_carry_the_training_set_names(trained):
    expected = storable_model_metadata(
        {"thing_classes": CLASSES, "thing_dataset_id_to_contiguous_id": ID_MAP}
    )
    checkpoints = sorted(f for f in os.listdir(trained) if f.endswith(".pth"))
    assert "model_final.pth" in checkpoints and len(checkpoints) >= 2  # periodic and final
    for name in checkpoints:
        assert torch.load(os.path.join(trained, name), weights_only=True)["metadata"] == expected, name
    saved = LazyConfig.load(os.path.join(trained, "config.yaml"))
    assert config_model_metadata(saved, "config.yaml") == {
        "thing_classes": CLASSES,
        "thing_dataset_id_to_contiguous_id": ID_MAP,
    }


@pytest.mark.slow
def test_published_file_is_lean(trained, published):
    final = os.path.join(trained, "model_final.pth")
    checkpoint = torch.load(final, weights_only=True)
    content = torch.load(published["pth"], weights_only=True)
    assert set(content) == {"model", "metadata"} and "optimizer" in checkpoint["trainer"]
    assert content["metadata"] == checkpoint["metadata"]
    assert set(content["model"]) == set(checkpoint["model"])
    assert os.path.getsize(published["pth"]) < 0.5 * os.path.getsize(final)  # AdamW keeps 2 moments
    assert os.path.getsize(published["fp16"]) < 0.6 * os.path.getsize(published["safetensors"])


# A fresh process that registers no data set: each case builds a predictor as the demo does,
# then runs the demo itself, recording the labels drawn on the pictures.
_PREDICT_DRIVER = """
import importlib.util, json, os, sys
sys.path.insert(0, {repo!r})
import detectron2.utils.visualizer as visualizer
from detectron2.data import DatasetCatalog
from rsb_backbone.inference import build_predictor

spec = importlib.util.spec_from_file_location("predict_demo", os.path.join({repo!r}, "projects", "predict_demo", "predict.py"))
demo = importlib.util.module_from_spec(spec)
spec.loader.exec_module(demo)
drawn = []
create_text_labels = visualizer._create_text_labels
def recording_labels(*args, **kwargs):
    labels = create_text_labels(*args, **kwargs)
    drawn.extend(labels or [])
    return labels
visualizer._create_text_labels = recording_labels

cases, val_dir, val_json, out_dir = json.loads(sys.argv[1])
found = {{"registered": sorted(n for n in DatasetCatalog.list() if n.startswith("relabelled"))}}
for name, config, checkpoint, opts in cases:
    predictor = build_predictor(config, checkpoint, score_threshold=0.0, opts=opts)
    drawn.clear()
    output = os.path.join(out_dir, name)
    demo.main(["--config-file", config, "--checkpoint", checkpoint, "--input", val_dir,
               "--coco-json", val_json, "--output", output, "--confidence-threshold", "0.0", *opts])
    with open(os.path.join(output, "predictions.json")) as f:
        results = json.load(f)
    found[name] = {{
        "kind": type(predictor).__name__,
        "thing_classes": predictor.metadata.get("thing_classes"),
        "id_map": {{str(k): v for k, v in predictor.metadata.get("thing_dataset_id_to_contiguous_id", {{}}).items()}},
        "labels": sorted(set(label.rsplit(" ", 1)[0] for label in drawn)),
        "category_ids": sorted(set(r["category_id"] for r in results)),
        "num_results": len(results),
    }}
print("FOUND " + json.dumps(found))
"""


@pytest.fixture(scope="module")
def fresh_predictions(trained, published, relabelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("fresh_predictions")
    # A checkpoint without stored names: the saved config.yaml's metadata node gives them.
    checkpoint = torch.load(os.path.join(trained, "model_final.pth"), weights_only=True)
    bare = str(out / "model_tensors_only.pth")
    torch.save({"model": checkpoint["model"]}, bare)
    saved_config = os.path.join(trained, "config.yaml")
    final = os.path.join(trained, "model_final.pth")
    cases = [
        ("saved_config", saved_config, final, []),
        ("yacs_twin", shapes_config(".yaml"), final, YACS_OPTS),
        ("published_pth_saved_config", saved_config, published["pth"], []),
        ("published_safetensors_shapes_config", shapes_config(), published["safetensors"], LAZY_OPTS),
        ("published_fp16_yacs_twin", shapes_config(".yaml"), published["fp16"], YACS_OPTS),
        ("saved_config_tensors_only_checkpoint", saved_config, bare, []),
    ]
    args = [cases, relabelled["val"]["image_root"], relabelled["val"]["json_file"], str(out)]
    result = subprocess.run(
        [sys.executable, "-c", _PREDICT_DRIVER.format(repo=REPO_ROOT), json.dumps(args)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, f"prediction failed:\n{result.stderr[-4000:]}"
    line = [line for line in result.stdout.splitlines() if line.startswith("FOUND ")][-1]
    return json.loads(line[len("FOUND ") :])


PREDICTION_CASES = (
    "saved_config",
    "yacs_twin",
    "published_pth_saved_config",
    "published_safetensors_shapes_config",
    "published_fp16_yacs_twin",
    "saved_config_tensors_only_checkpoint",
)


@pytest.mark.slow
@pytest.mark.parametrize("case", PREDICTION_CASES)
def test_fresh_process_predicts_with_the_training_set_names(case, fresh_predictions):
    assert fresh_predictions["registered"] == []  # nothing registered in that process
    found = fresh_predictions[case]
    assert found["kind"] == ("DefaultPredictor" if "yacs" in case else "LazyConfigPredictor")
    assert found["thing_classes"] == CLASSES
    assert found["id_map"] == {str(k): v for k, v in ID_MAP.items()}
    assert found["num_results"] > 0
    assert found["labels"] and set(found["labels"]) <= set(CLASSES)  # the pictures' labels
    assert set(found["category_ids"]) <= set(ID_MAP)  # COCO results in the data set's ids


# train_net.py's own main() for each --eval-only run, in one process.
_EVAL_DRIVER = """
import json, sys
sys.path.insert(0, {repo!r})
import train_net
for argv in json.loads(sys.argv[1]):
    train_net.main(train_net.build_argument_parser().parse_args(argv))
"""


@pytest.mark.slow
def test_published_files_evaluate_like_their_checkpoint(trained, published, relabelled, tmp_path):
    """--eval-only (tensors-only loading) of the checkpoint and of its published files: the same
    detections and the same AP."""
    files = {"checkpoint": os.path.join(trained, "model_final.pth"), **published}
    runs = []
    for name, path in files.items():
        runs.append(
            ["--config-file", os.path.join(trained, "config.yaml"), "--eval-only", *_register_args(relabelled),
             f"train.init_checkpoint={path}", f"train.output_dir={tmp_path / name}"]
        )  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-c", _EVAL_DRIVER.format(repo=REPO_ROOT), json.dumps(runs)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, f"train_net.py --eval-only failed:\n{result.stderr[-4000:]}"

    def outputs(name):
        with open(tmp_path / name / "eval_results.json") as f:
            results = json.load(f)
        with open(tmp_path / name / "inference" / "coco_instances_results.json") as f:
            return results, json.load(f)

    results, detections = outputs("checkpoint")
    assert detections and {d["category_id"] for d in detections} <= set(ID_MAP)
    for name in ("pth", "safetensors"):
        assert outputs(name) == (results, detections), name
    fp16_results, fp16_detections = outputs("fp16")  # loads; half precision may move scores a little
    assert set(fp16_results) == set(results) and fp16_detections
