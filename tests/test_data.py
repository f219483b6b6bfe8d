"""The data layer: shapes generator, builtin registration, checked COCO registration."""

import contextlib
import io
import json
import logging
import multiprocessing
import os
import uuid

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.build import filter_images_with_only_crowd_annotations, get_detection_dataset_dicts
from detectron2.data.common import DatasetFromList, MapDataset
from detectron2.structures import Boxes, BoxMode, Instances

import rsb_backbone.data.datasets.shapes as shapes
from rsb_backbone.data import (
    check_registered_sets,
    EvaluationDatasetMapper,
    SkippingDatasetMapper,
    load_coco_instances_checked,
    nothing_to_train_on,
    parse_register_coco_arg,
    register_coco_from_arg,
    register_coco_instances_checked,
)
from rsb_backbone.data.datasets.shapes import ensure_shapes_dataset, generate_shapes_dataset
from rsb_backbone.data import coco_registration
from rsb_backbone.data.coco_registration import _read_coco
from rsb_backbone.data.mapper import MAX_IMAGE_PIXELS_VARIABLE, UnreadableImageError
from rsb_backbone.data.datasets.builtin import (
    SHAPES_DATASETS,
    datasets_root,
    register_shapes_dataset,
    register_shapes_demo_datasets,
)

TINY = dict(num_train=3, num_val=2, min_size=64, max_size=96)
CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]
SQUARE_POLYGON = [[2.0, 2.0, 12.0, 2.0, 12.0, 12.0, 2.0, 12.0]]
REGISTRATION_LOGGER = "rsb_backbone.data.coco_registration"  # Detectron2 logs warnings of its own


def _unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def _read_json(path):
    with open(path) as f:
        return json.load(f)


def _annotation(ann_id, image_id=1, category_id=1, bbox=(2, 2, 10, 10), segmentation=None):
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": list(bbox),
        "area": float(bbox[2] * bbox[3]),
        "iscrowd": 0,
        "segmentation": SQUARE_POLYGON if segmentation is None else segmentation,
    }


def _write_coco(root, annotations, *, num_images=1, width=40, height=30, categories=CATEGORIES):
    """A tiny COCO set: ``num_images`` real JPEGs under root/images and root/ann.json."""
    image_root = os.path.join(root, "images")
    os.makedirs(image_root, exist_ok=True)
    images = []
    for image_id in range(1, num_images + 1):
        file_name = f"{image_id}.jpg"
        cv2.imwrite(os.path.join(image_root, file_name), np.full((height, width, 3), 128, np.uint8))
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
    json_file = os.path.join(root, "ann.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file, image_root


# --- shapes generator -------------------------------------------------------------------------


def test_generator_is_deterministic(tmp_path):
    a = generate_shapes_dataset(tmp_path / "a", seed=3, **TINY)
    b = generate_shapes_dataset(tmp_path / "b", seed=3, **TINY)
    c = generate_shapes_dataset(tmp_path / "c", seed=4, **TINY)
    for split in ("train", "val"):
        assert (
            _read_json(a[split]["json_file"])["annotations"]
            == _read_json(b[split]["json_file"])["annotations"]
        )
        files = sorted(os.listdir(a[split]["image_root"]))
        assert files == sorted(os.listdir(b[split]["image_root"]))
        for name in files:
            with open(os.path.join(a[split]["image_root"], name), "rb") as fa:
                with open(os.path.join(b[split]["image_root"], name), "rb") as fb:
                    assert fa.read() == fb.read()
    assert _read_json(a["train"]["json_file"]) != _read_json(c["train"]["json_file"])


def test_generated_set_is_valid_coco(tmp_path):
    from pycocotools.coco import COCO

    paths = generate_shapes_dataset(tmp_path / "shapes", num_train=6, num_val=2, seed=0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(paths["train"]["json_file"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["circle", "square", "triangle"]
    assert len(coco.getImgIds()) == 6
    for image_id in coco.getImgIds():
        info = coco.loadImgs(image_id)[0]
        image = cv2.imread(os.path.join(paths["train"]["image_root"], info["file_name"]))
        assert image.shape == (info["height"], info["width"], 3)
        assert info["height"] != info["width"]
        assert 160 <= info["height"] <= 256 and 160 <= info["width"] <= 256
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id))
        assert 1 <= len(anns) <= 4
        short_side = min(info["height"], info["width"])
        for ann in anns:
            assert ann["iscrowd"] == 0 and ann["category_id"] in (1, 2, 3)
            x, y, w, h = ann["bbox"]
            assert 0 <= x and 0 <= y and x + w <= info["width"] and y + h <= info["height"]
            assert min(w, h) >= 0.2 * short_side  # large enough to learn
            mask = coco.annToMask(ann)
            ys, xs = np.nonzero(mask)
            assert (
                xs.min() >= x - 1 and xs.max() <= x + w and ys.min() >= y - 1 and ys.max() <= y + h
            )
            assert mask.sum() == pytest.approx(ann["area"], rel=0.15)
            # The object is drawn where its mask is: solid colour, unlike the noisy background.
            inside = image[cv2.erode(mask, np.ones((5, 5), np.uint8)) > 0].astype(float)
            assert inside.std(axis=0).max() < 8.0
        for i, a in enumerate(anns):  # objects do not overlap
            for b in anns[i + 1 :]:
                ax, ay, aw, ah = a["bbox"]
                bx, by, bw, bh = b["bbox"]
                assert ax + aw <= bx or bx + bw <= ax or ay + ah <= by or by + bh <= ay


def test_generate_refuses_existing_folder(tmp_path):
    (tmp_path / "shapes").mkdir()
    (tmp_path / "shapes" / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="shapes"):
        generate_shapes_dataset(tmp_path / "shapes", **TINY)


def test_generate_discards_its_copy_when_target_appears(tmp_path, monkeypatch, caplog):
    target = tmp_path / "shapes"
    write_split = shapes._write_split

    def racing_write_split(output_dir, **kwargs):
        if not target.exists():  # another process finishes first, with another seed
            monkeypatch.setattr(shapes, "_write_split", write_split)
            generate_shapes_dataset(target, seed=1, **TINY)
            monkeypatch.setattr(shapes, "_write_split", racing_write_split)
        return write_split(output_dir, **kwargs)

    monkeypatch.setattr(shapes, "_write_split", racing_write_split)
    with caplog.at_level(logging.INFO, logger=shapes.__name__):
        paths = generate_shapes_dataset(target, seed=0, **TINY)
    assert "discarding this copy" in caplog.text
    monkeypatch.setattr(shapes, "_write_split", write_split)
    expected = generate_shapes_dataset(tmp_path / "seed1", seed=1, **TINY)
    assert (
        _read_json(paths["val"]["json_file"])["annotations"]
        == _read_json(expected["val"]["json_file"])["annotations"]
    )
    assert sorted(os.listdir(tmp_path)) == ["seed1", "shapes"]  # no temporary folder left


def _ensure_in_child(root):
    ensure_shapes_dataset(root, **TINY)


def test_ensure_from_two_processes_at_once(tmp_path):
    root = str(tmp_path / "shapes")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_ensure_in_child, args=(root,)) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    assert sorted(os.listdir(tmp_path)) == ["shapes"]
    assert len(_read_json(os.path.join(root, "train.json"))["images"]) == TINY["num_train"]
    mtime = os.path.getmtime(os.path.join(root, "train.json"))
    ensure_shapes_dataset(root, **TINY)  # present: not generated again
    assert os.path.getmtime(os.path.join(root, "train.json")) == mtime


# --- demo data set registration (projects/shapes_demo) ---------------------------------------


def test_demo_names_are_registered():
    register_shapes_demo_datasets()
    register_shapes_demo_datasets()  # again: no error
    for name, split in SHAPES_DATASETS.items():
        assert name in DatasetCatalog.list()
        meta = MetadataCatalog.get(name)
        assert meta.thing_classes == ["circle", "square", "triangle"]
        assert meta.evaluator_type == "coco"
        assert meta.json_file.endswith(os.path.join("shapes", f"{split}.json"))
        assert meta.image_root.endswith(os.path.join("shapes", split))


def test_datasets_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RSB_DATASETS", str(tmp_path))
    assert datasets_root() == str(tmp_path)
    monkeypatch.delenv("RSB_DATASETS")
    assert datasets_root() == os.path.abspath("datasets")


def test_shapes_generated_on_first_load_and_evaluable(tmp_path):
    from detectron2.evaluation import COCOEvaluator

    name = _unique_name("test_shapes_val")
    root = tmp_path / "shapes"
    register_shapes_dataset(name, "val", root=root, **TINY)
    register_shapes_dataset(name, "val", root=root, **TINY)  # idempotent
    with pytest.raises(ValueError, match=name):
        register_shapes_dataset(name, "val", root=tmp_path / "elsewhere")
    assert not root.exists()  # registering writes nothing

    records = DatasetCatalog.get(name)
    assert len(records) == TINY["num_val"]
    assert os.path.isfile(MetadataCatalog.get(name).json_file)

    # Ground truth as predictions: AP 100 only if ids map back to the json's categories.
    evaluator = COCOEvaluator(name, tasks=("bbox",), output_dir=str(tmp_path / "eval"))
    evaluator.reset()
    for record in records:
        instances = Instances((record["height"], record["width"]))
        boxes = [
            BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS)
            for a in record["annotations"]
        ]
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)


# --- NAME=JSON:IMAGE_DIR ----------------------------------------------------------------------


def test_parse_register_coco_arg():
    assert parse_register_coco_arg("my_train=a/train.json:img/train") == (
        "my_train",
        "a/train.json",
        "img/train",
    )
    assert parse_register_coco_arg("x=t.json:/data/a:b") == ("x", "t.json", "/data/a:b")


@pytest.mark.parametrize(
    "value",
    ["train.json:images", "my=train.json", "=train.json:images", "my=:images", "my=a.json:"],
)
def test_parse_register_coco_arg_rejects(value):
    with pytest.raises(ValueError, match="NAME=JSON:IMAGE_DIR") as info:
        parse_register_coco_arg(value)
    assert repr(value) in str(info.value)


# --- checked COCO registration: one test per documented decision -----------------------------


def test_register_sets_metadata_and_loads(tmp_path):
    categories = [{"id": 9, "name": "zebra"}, {"id": 5, "name": "ant"}]
    json_file, image_root = _write_coco(
        tmp_path,
        [_annotation(1, category_id=9), _annotation(2, category_id=5)],
        categories=categories,
    )
    name = _unique_name("test_user")
    assert register_coco_from_arg(f"{name}={json_file}:{image_root}") == name
    register_coco_instances_checked(name, json_file, image_root)  # same again: no-op
    with pytest.raises(ValueError, match=name):
        register_coco_instances_checked(name, json_file, str(tmp_path))
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == ["ant", "zebra"]  # ordered by category id
    assert meta.thing_dataset_id_to_contiguous_id == {5: 0, 9: 1}
    assert (meta.image_root, meta.evaluator_type) == (image_root, "coco")
    assert len(MetadataCatalog.get(name).thing_classes) == 2
    (record,) = DatasetCatalog.get(name)
    assert meta.json_file == json_file  # for COCOEvaluator, set by the first load (the file is complete)
    assert [a["category_id"] for a in record["annotations"]] == [1, 0]
    assert record["file_name"] == os.path.join(image_root, "1.jpg")


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        ("{not json", "not valid JSON"),
        ('{"images": [], "annotations": []}', "not a COCO instances file"),
        ("[1, 2]", "not a COCO instances file"),
    ],
)
def test_bad_json_file(tmp_path, content, message):
    json_file = str(tmp_path / "ann.json")
    if content is not None:
        (tmp_path / "ann.json").write_text(content)
    with pytest.raises(ValueError, match=message) as info:
        register_coco_instances_checked(_unique_name("test_bad"), json_file, str(tmp_path))
    assert str(info.value).startswith(json_file)
    assert "\n" not in str(info.value)


def test_missing_image_folder(tmp_path):
    json_file, _ = _write_coco(tmp_path, [_annotation(1)])
    missing = str(tmp_path / "no_images")
    with pytest.raises(ValueError, match="image folder") as info:
        register_coco_instances_checked(_unique_name("test_nofolder"), json_file, missing)
    assert str(info.value).startswith(missing)


def test_missing_image_file_fails_at_load(tmp_path):
    json_file, image_root = _write_coco(tmp_path, [_annotation(1)], num_images=3)
    os.remove(os.path.join(image_root, "2.jpg"))
    os.remove(os.path.join(image_root, "3.jpg"))
    name = _unique_name("test_missing_image")
    register_coco_instances_checked(name, json_file, image_root)  # files checked at load
    with pytest.raises(ValueError) as info:
        DatasetCatalog.get(name)
    message = str(info.value)
    assert os.path.join(image_root, "2.jpg") in message
    assert "image id 2" in message and "1 more missing" in message


def test_registered_set_parses_once_per_load_and_checks_files_once(tmp_path, monkeypatch):
    json_file, image_root = _write_coco(tmp_path, [_annotation(1, image_id=2)], num_images=2)
    parses = []
    json_load = json.load
    monkeypatch.setattr(json, "load", lambda f, **kw: parses.append(f.name) or json_load(f, **kw))
    name = _unique_name("test_cached")
    register_coco_instances_checked(name, json_file, image_root)
    assert parses == []  # registration reads the categories only, and holds nothing
    assert MetadataCatalog.get(name).thing_classes == ["cat", "dog"]
    assert "json_annotation_count" not in MetadataCatalog.get(name).as_dict()
    assert [r["image_id"] for r in DatasetCatalog.get(name)] == [1, 2]
    assert parses == [json_file]  # one parse per load
    meta = MetadataCatalog.get(name)  # completed by the first load
    assert (meta.json_annotation_count, meta.json_has_masks, meta.json_file) == (1, True, json_file)
    os.remove(os.path.join(image_root, "1.jpg"))  # later loads (evaluations) do not stat again
    _, second = DatasetCatalog.get(name)
    assert second["annotations"][0]["bbox"] == [2, 2, 10, 10] and parses == [json_file] * 2
    check_registered_sets([name, "rsb_shapes_val"])  # loaded already: no third parse
    assert parses == [json_file] * 2


def test_registration_reads_the_top_level_categories_without_parsing(tmp_path, monkeypatch):
    categories = [{"id": 4, "name": "dog", "supercategory": "animal"}, {"id": 2, "name": "cat"}]
    # Pretty-printed, "categories" first, the text "categories" also as a value and inside an image's
    # file name: the scan decodes only a list that follows the key.
    dataset = {
        "categories": categories,
        "info": {"description": '"categories" in a string'},
        "images": [{"id": 1, "file_name": "categories.jpg", "height": 32, "width": 32}],
        "annotations": [{**_annotation(1), "category_id": 2, "segmentation": []}],
    }
    json_file = tmp_path / "pretty.json"
    json_file.write_text(json.dumps(dataset, indent=2))
    (tmp_path / "categories.jpg").write_bytes(b"")
    monkeypatch.setattr(coco_registration, "_SCAN_CHUNK", 64)  # keys across chunk borders
    assert coco_registration._scan_coco_file(str(json_file)) == (categories, True)
    name = _unique_name("test_scan")
    register_coco_instances_checked(name, str(json_file), str(tmp_path))
    assert MetadataCatalog.get(name).thing_classes == ["cat", "dog"]
    # A second "categories" list of the same shape (nested): ambiguous, so the file is parsed now.
    dataset["info"]["categories"] = [{"id": 1, "name": "other"}]
    json_file.write_text(json.dumps(dataset))
    assert coco_registration._scan_coco_file(str(json_file))[0] is None
    parses = []
    json_load = json.load
    monkeypatch.setattr(json, "load", lambda f, **kw: parses.append(f.name) or json_load(f, **kw))
    other = _unique_name("test_scan_nested")
    register_coco_instances_checked(other, str(json_file), str(tmp_path))
    assert parses == [str(json_file)] and MetadataCatalog.get(other).thing_classes == ["cat", "dog"]
    # No "segmentation" anywhere: known to have no masks at registration.
    boxes = {**dataset, "annotations": [{k: v for k, v in _annotation(1).items() if k != "segmentation"}]}
    boxes_file = tmp_path / "boxes.json"
    boxes_file.write_text(json.dumps(boxes))
    assert coco_registration._scan_coco_file(str(boxes_file))[1] is False


@pytest.mark.parametrize(
    "annotation, message",
    [
        (_annotation(5, image_id=9), "annotation id 5 refers to image id 9"),
        (_annotation(1), "id 1 appears twice in 'annotations'"),
        ({**_annotation(5), "bbox": [1, 2, 3]}, "annotation id 5 has bbox"),
        (_annotation(5, segmentation=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]), "annotation id 5 has a segm"),
        ({**_annotation(5), "ignore": 1}, "not supported"),
        ({"id": 5, "image_id": 1, "bbox": [1, 1, 2, 2]}, r"annotations\[1\] lacks one of"),
    ],
)
def test_malformed_annotation(tmp_path, annotation, message):
    json_file, image_root = _write_coco(tmp_path, [_annotation(1), annotation])
    with pytest.raises(ValueError, match=message) as info:
        load_coco_instances_checked(json_file, image_root)
    assert str(info.value).startswith(json_file) and "\n" not in str(info.value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_skipped_by_mapper(tmp_path, caplog, damage):
    json_file, image_root = _write_coco(
        tmp_path, [_annotation(1, image_id=1), _annotation(2, image_id=2)], num_images=2
    )
    bad_file = os.path.join(image_root, "1.jpg")
    with open(bad_file, "rb") as f:
        data = f.read()
    with open(bad_file, "wb") as f:
        f.write(b"not an image at all" if damage == "garbage" else data[: len(data) // 2])
    records = load_coco_instances_checked(json_file, image_root)
    mapper = SkippingDatasetMapper(
        is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True
    )
    dataset = MapDataset(DatasetFromList(records, copy=False), mapper)
    with caplog.at_level(logging.WARNING, logger="rsb_backbone.data.mapper"):
        first = dataset[0]
        dataset[0]
    assert first["image_id"] == 2  # Detectron2 sampled the readable image instead
    assert mapper.num_skipped == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "rsb_backbone.data.mapper"]
    assert len(warnings) == 1 and bad_file in warnings[0]  # once per file


def _with_wrong_size_in_json(tmp_path):
    """Two images; the JSON gives the first one a width and height its file does not have."""
    json_file, image_root = _write_coco(
        tmp_path, [_annotation(1, image_id=1), _annotation(2, image_id=2)], num_images=2
    )
    data = _read_json(json_file)
    data["images"][0]["width"], data["images"][0]["height"] = 30, 40  # the file is 40 x 30
    with open(json_file, "w") as f:
        json.dump(data, f)
    return load_coco_instances_checked(json_file, image_root), os.path.join(image_root, "1.jpg")


def test_image_of_another_size_than_the_json_is_skipped_and_counted_in_training(tmp_path, caplog):
    records, wrong = _with_wrong_size_in_json(tmp_path)
    mapper = SkippingDatasetMapper(is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True)
    dataset = MapDataset(DatasetFromList(records, copy=False), mapper)
    with caplog.at_level(logging.WARNING, logger="rsb_backbone.data.mapper"):
        assert dataset[0]["image_id"] == 2  # another image was sampled
    assert mapper.num_skipped == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "rsb_backbone.data.mapper"]
    assert wrong in warning and "width x height in the JSON is 30x40 but the file's is 40x30" in warning


def test_image_of_another_size_than_the_json_names_both_sizes_in_evaluation(tmp_path):
    records, wrong = _with_wrong_size_in_json(tmp_path)
    mapper = EvaluationDatasetMapper(is_train=False, augmentations=[], image_format="RGB")
    with pytest.raises(UnreadableImageError) as info:
        mapper(records[0])
    message = str(info.value)
    assert message == (
        f"evaluation image {wrong}: its width x height in the JSON is 30x40 but the file's is 40x30; "
        f"correct width/height in the JSON or the file"
    )
    assert mapper(records[1])["image_id"] == 2


def test_unknown_category_id(tmp_path):
    json_file, image_root = _write_coco(tmp_path, [_annotation(1), _annotation(77, category_id=3)])
    with pytest.raises(ValueError) as info:
        load_coco_instances_checked(json_file, image_root)
    message = str(info.value)
    assert message.startswith(json_file) and "annotation id 77" in message
    assert "category_id 3" in message
    name = _unique_name("test_unknown")
    register_coco_instances_checked(name, json_file, image_root)  # the annotations are checked at load
    with pytest.raises(ValueError, match="annotation id 77"):
        DatasetCatalog.get(name)
    with pytest.raises(ValueError, match="annotation id 77"):  # e.g. the evaluation set, before training
        check_registered_sets([name])


def test_images_without_annotations_are_kept(tmp_path, caplog):
    json_file, image_root = _write_coco(tmp_path, [_annotation(1, image_id=2)], num_images=3)
    with caplog.at_level(logging.INFO, logger=REGISTRATION_LOGGER):
        records = load_coco_instances_checked(json_file, image_root)
    assert [r["image_id"] for r in records] == [1, 2, 3]
    assert "2 images have no annotations" in caplog.text
    assert [r["image_id"] for r in filter_images_with_only_crowd_annotations(records)] == [2]


def test_degenerate_and_outside_boxes(tmp_path, caplog):
    annotations = [
        _annotation(1, bbox=(2, 2, 10, 10)),
        _annotation(2, bbox=(2, 2, 0, 10)),  # degenerate
        _annotation(3, bbox=(2, 2, 10, -1)),  # degenerate
        _annotation(4, bbox=(100, 5, 10, 10)),  # right of the 40x30 image
        _annotation(5, bbox=(-5, 20, 20, 20)),  # partly outside: clipped
    ]
    json_file, image_root = _write_coco(tmp_path, annotations)
    with caplog.at_level(logging.WARNING, logger=REGISTRATION_LOGGER):
        (record,) = load_coco_instances_checked(json_file, image_root)
    assert [a["bbox"] for a in record["annotations"]] == [[2, 2, 10, 10], [0, 20, 15, 10]]
    (summary,) = [r.getMessage() for r in caplog.records if r.name == REGISTRATION_LOGGER]
    assert summary.startswith(json_file) and "skipped 3 annotations" in summary
    assert "2 with degenerate box (ids [2, 3])" in summary
    assert "1 with box outside the image (ids [4])" in summary
    assert "clipped 1 boxes" in summary


def test_short_polygons(tmp_path, caplog):
    triangle = [2.0, 2.0, 12.0, 2.0, 7.0, 10.0]
    annotations = [
        _annotation(1, segmentation=[triangle, [1.0, 1.0, 5.0, 5.0]]),  # one polygon dropped
        _annotation(2, segmentation=[[1.0, 1.0, 5.0, 5.0]]),  # none left: skipped
        _annotation(3, segmentation=[[1.0, 1.0, 5.0, 5.0, 9.0]]),  # odd length: skipped
        {**_annotation(4), "keypoints": [3, 3, 2]},  # keypoints not loaded
    ]
    json_file, image_root = _write_coco(tmp_path, annotations)
    with caplog.at_level(logging.WARNING, logger=REGISTRATION_LOGGER):
        (record,) = load_coco_instances_checked(json_file, image_root)
    assert [a.get("segmentation") for a in record["annotations"]] == [[triangle], SQUARE_POLYGON]
    assert not any("keypoints" in a or "id" in a for a in record["annotations"])
    (summary,) = [r.getMessage() for r in caplog.records if r.name == REGISTRATION_LOGGER]
    assert "2 with no valid polygon (ids [2, 3])" in summary
    assert "dropped 3 polygons" in summary


def test_boxes_without_masks_kept_alone_dropped_among_masks(tmp_path, caplog):
    """A set of boxes only stays one; in a set with masks, an annotation without one is skipped,
    so that Detectron2's mapper can build every image's masks for mask training."""
    boxes_only = [_annotation(1, segmentation=[]), {**_annotation(2), "segmentation": None}]
    json_file, image_root = _write_coco(tmp_path / "boxes", boxes_only)
    (record,) = load_coco_instances_checked(json_file, image_root)
    assert len(record["annotations"]) == 2 and not any("segmentation" in a for a in record["annotations"])

    mixed = [_annotation(1, segmentation=[]), _annotation(2), _annotation(3, image_id=2, segmentation=[])]
    json_file, image_root = _write_coco(tmp_path / "mixed", mixed, num_images=2)
    with caplog.at_level(logging.WARNING, logger=REGISTRATION_LOGGER):
        first, second = load_coco_instances_checked(json_file, image_root)
    assert [a["segmentation"] for a in first["annotations"]] == [SQUARE_POLYGON] and not second["annotations"]
    (summary,) = [r.getMessage() for r in caplog.records if r.name == REGISTRATION_LOGGER]
    assert "2 with no mask in a set with masks (ids [1, 3])" in summary
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR", use_instance_mask=True)
    (polygons,) = mapper(first)["instances"].gt_masks.polygons  # one instance, with its mask
    np.testing.assert_allclose(polygons[0], SQUARE_POLYGON[0])


# --- real-world sets: images over PIL's size limit, fields labelling tools leave out ----------


def _with_png_over_pil_limit(tmp_path, monkeypatch, limit):
    """Two images: an 80x60 PNG (4800 pixels) and a 40x30 JPEG (1200); ``RSB_MAX_IMAGE_PIXELS=limit``
    (PIL refuses images over twice the limit); PIL's own limit is restored after the test."""
    json_file, image_root = _write_coco(
        tmp_path, [_annotation(1, image_id=1), _annotation(2, image_id=2)], num_images=2
    )
    png = os.path.join(image_root, "1.png")
    cv2.imwrite(png, np.full((60, 80, 3), 200, np.uint8))
    data = _read_json(json_file)
    data["images"][0].update(file_name="1.png", width=80, height=60)
    with open(json_file, "w") as f:
        json.dump(data, f)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS)  # restored afterwards
    monkeypatch.setenv(MAX_IMAGE_PIXELS_VARIABLE, str(limit))
    return load_coco_instances_checked(json_file, image_root), png


def test_image_over_pil_limit_is_skipped_in_training_and_named_in_evaluation(tmp_path, monkeypatch, caplog):
    records, png = _with_png_over_pil_limit(tmp_path, monkeypatch, limit=2399)  # 4800 > 2 x 2399
    mapper = SkippingDatasetMapper(is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True)
    dataset = MapDataset(DatasetFromList(records, copy=False), mapper)
    with caplog.at_level(logging.WARNING, logger="rsb_backbone.data.mapper"):
        assert dataset[0]["image_id"] == 2  # another image was sampled
    assert mapper.num_skipped == 1
    (warning,) = [r.getMessage() for r in caplog.records if r.name == "rsb_backbone.data.mapper"]
    assert png in warning and "4800 pixels" in warning and f"{MAX_IMAGE_PIXELS_VARIABLE}=PIXELS" in warning

    evaluation = EvaluationDatasetMapper(is_train=False, augmentations=[], image_format="RGB")
    with pytest.raises(UnreadableImageError) as info:
        evaluation(records[0])
    message = str(info.value)
    assert message.startswith(f"evaluation image {png} is too large: Image size (4800 pixels) exceeds")
    assert f"{MAX_IMAGE_PIXELS_VARIABLE}=none" in message and "\n" not in message


def test_large_images_load_once_allowed(tmp_path, monkeypatch):
    records, _ = _with_png_over_pil_limit(tmp_path, monkeypatch, limit=2399)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_VARIABLE, "2400")  # 4800 is not over twice 2400
    training = SkippingDatasetMapper(is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True)
    assert training(records[0])["image"].shape == (3, 60, 80) and training.num_skipped == 0
    monkeypatch.setenv(MAX_IMAGE_PIXELS_VARIABLE, "none")
    evaluation = EvaluationDatasetMapper(is_train=False, augmentations=[], image_format="RGB")
    assert evaluation(records[0])["image"].shape == (3, 60, 80)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_VARIABLE, "lots")
    with pytest.raises(ValueError, match=f"{MAX_IMAGE_PIXELS_VARIABLE}='lots': expected a positive number"):
        EvaluationDatasetMapper(is_train=False, augmentations=[], image_format="RGB")


def test_pixel_limit_applies_in_spawned_data_loader_workers(tmp_path, monkeypatch):
    """A worker started by spawn imports PIL afresh (default limit: it would read the PNG): the
    mapper carries the limit there."""
    records, _ = _with_png_over_pil_limit(tmp_path, monkeypatch, limit=2399)
    mapper = SkippingDatasetMapper(is_train=True, augmentations=[], image_format="RGB", use_instance_mask=True)
    loader = torch.utils.data.DataLoader(
        MapDataset(DatasetFromList(records, copy=False), mapper),
        batch_size=None,
        num_workers=1,
        multiprocessing_context="spawn",
    )
    assert [d["image_id"] for d in loader] == [2, 2]  # the PNG was refused in the worker


def test_missing_area_and_iscrowd_are_filled_in_and_coco_evaluation_works(tmp_path, caplog):
    from detectron2.evaluation import COCOEvaluator

    square = _annotation(1)  # its polygon is a 10 x 10 square
    triangle = _annotation(2, image_id=2, bbox=(2, 2, 10, 8), segmentation=[[2.0, 2.0, 12.0, 2.0, 7.0, 10.0]])
    for ann in (square, triangle):
        del ann["area"], ann["iscrowd"]
    json_file, image_root = _write_coco(tmp_path / "data", [square, triangle], num_images=2)
    name = _unique_name("test_no_area")
    register_coco_instances_checked(name, json_file, image_root)
    with caplog.at_level(logging.INFO, logger=REGISTRATION_LOGGER):
        DatasetCatalog.get(name)  # logged at the load, in the training processes' log
    filled = [r.getMessage() for r in caplog.records if "filled in" in r.getMessage()]
    assert filled == [
        f"{json_file}: filled in 'area' of 2 annotations (of the mask, or the box without one) and "
        f"'iscrowd'=0 of 2 annotations, which the file leaves out"
    ]
    assert "json_file" not in MetadataCatalog.get(name).as_dict()  # COCOEvaluator converts the loaded set
    areas = {a["id"]: a["area"] for a in _read_coco(json_file).dataset["annotations"]}
    assert areas[1] == pytest.approx(100, rel=0.15) and areas[2] == pytest.approx(40, rel=0.15)  # the masks'
    box_only = {**_annotation(3, bbox=(4, 4, 8, 5)), "segmentation": []}
    del box_only["area"], box_only["iscrowd"]
    boxes_json, _ = _write_coco(tmp_path / "boxes", [box_only])
    (ann,) = _read_coco(boxes_json).dataset["annotations"]
    assert (ann["area"], ann["iscrowd"]) == (40.0, 0)  # the box's
    # COCO evaluation of predictions equal to the ground truth: AP 100 (the evaluator builds its
    # ground truth from the loaded set, since the file lacks what pycocotools reads).
    evaluator = COCOEvaluator(name, tasks=("bbox",), output_dir=str(tmp_path / "eval"))
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        (ann,) = record["annotations"]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor([BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)]))
        instances.scores = torch.tensor([0.9])
        instances.pred_classes = torch.tensor([ann["category_id"]])
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    assert evaluator.evaluate()["bbox"]["AP"] == pytest.approx(100.0)


def test_nothing_to_train_on_names_the_set_and_why(tmp_path):
    empty_json, empty_root = _write_coco(tmp_path / "noann", [], num_images=2)
    skipped_json, skipped_root = _write_coco(
        tmp_path / "skipped", [_annotation(1, bbox=(2, 2, 0, 10)), _annotation(2, bbox=(100, 5, 10, 10))]
    )
    names = {}
    for key, (json_file, image_root) in {"noann": (empty_json, empty_root), "skipped": (skipped_json, skipped_root)}.items():
        names[key] = _unique_name(key)
        register_coco_instances_checked(names[key], json_file, image_root)
        with pytest.raises(AssertionError) as info:
            get_detection_dataset_dicts(names[key], filter_empty=True)
        error = nothing_to_train_on(info.value, [names[key]])
        assert isinstance(error, ValueError) and "\n" not in str(error)
        assert str(error).startswith(f"nothing to train on in dataloader.train.dataset.names=['{names[key]}']: ")
    assert f"{names['noann']}: {empty_json} has no annotations" in str(
        nothing_to_train_on(AssertionError(f"No valid data found in {names['noann']}."), [names["noann"]])
    )
    assert f"every one of the 2 annotations of {skipped_json} was skipped" in str(
        nothing_to_train_on(AssertionError(f"No valid data found in {names['skipped']}."), [names["skipped"]])
    )
    assert nothing_to_train_on(AssertionError("another check"), [names["noann"]]) is None
