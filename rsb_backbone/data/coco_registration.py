"""Registering a user's COCO-format instance data set (``--register-coco`` of the training entry point): Detectron2's
``load_coco_json`` with the checks and cleaning of docs/failure_behaviour.md, "Data problems in COCO-format sets".
RLE masks are kept as they are; keypoints are dropped.
"""

import collections
import contextlib
import gc
import io
import itertools
import json
import logging
import operator
import os
from typing import Any, Dict, List, Optional, Tuple
from unittest import mock

import pycocotools.coco
import pycocotools.mask
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..utils.errors import first_items

logger = logging.getLogger(__name__)


# The lists of a COCO instances file -> the keys that each of their entries must have.
_REQUIRED_KEYS = {
    "images": ("id", "file_name", "height", "width"),
    "annotations": ("id", "image_id", "category_id", "bbox"),
    "categories": ("id", "name"),
}


def parse_register_coco_arg(value: str) -> Tuple[str, str, str]:
    """Split ``NAME=JSON:IMAGE_DIR`` at the first ``=`` and the first ``:`` after it.

    Args:
        value: the command-line value, e.g. ``"mydata_train=ann/train.json:images/train"``.

    Returns:
        ``(name, json_file, image_root)``.
    """
    name, has_equals, paths = value.partition("=")
    json_file, has_colon, image_root = paths.partition(":")
    if not (has_equals and has_colon and name.strip() and json_file and image_root):
        raise ValueError(
            f"--register-coco {value!r}: expected NAME=JSON:IMAGE_DIR, e.g. "
            f"mydata_train=annotations/train.json:images/train"
        )
    return name.strip(), json_file, image_root


def _read_coco(json_file: str) -> pycocotools.coco.COCO:
    """Parse, check and index a COCO instances file (the checks see duplicates the index drops)."""
    if not os.path.isfile(json_file):
        raise ValueError(f"{json_file}: COCO json file does not exist")
    try:
        with open(json_file) as f:
            dataset = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_file}: not valid JSON ({e})") from e
    except OSError as e:
        raise ValueError(f"{json_file}: cannot read the COCO json file ({e.strerror})") from e
    keys = list(_REQUIRED_KEYS)
    missing = [k for k in keys if not isinstance(dataset.get(k), list)] if isinstance(dataset, dict) else keys
    if missing:
        raise ValueError(
            f"{json_file}: not a COCO instances file (top level: {type(dataset).__name__} "
            f"without the lists {missing}; expected an object with lists {keys})"
        )
    if not dataset["categories"]:
        raise ValueError(f"{json_file}: 'categories' is empty; expected at least one category")
    # The checks run as whole-list operations first (a COCO-train-sized file has 860,000 annotations);
    # only a file that fails one is walked entry by entry, for the first entry at fault.
    if not _entries_pass(dataset):
        _check_entries(json_file, dataset)
    coco = pycocotools.coco.COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # createIndex prints its progress
        coco.createIndex()
    if not _annotations_pass(dataset["annotations"], coco):
        _check_annotations(json_file, dataset["annotations"], coco)
    # How many annotations lack fields that pycocotools' evaluation reads (filled in now).
    coco.filled_in_counts = _fill_in_optional_fields(dataset, coco.imgs)
    return coco


def _entries_pass(dataset: dict) -> bool:
    """Whether every entry of the three lists has its required keys, no id appears twice in a list and
    the category ids are integers (whole-list operations; :func:`_check_entries` names what fails)."""
    try:
        for key, required in _REQUIRED_KEYS.items():
            ids = [values[0] for values in map(operator.itemgetter(*required), dataset[key])]
            if len(set(ids)) != len(ids):
                return False
    except (KeyError, TypeError, IndexError):  # an entry that is not a dict, or lacks a key
        return False
    return set(map(type, (c["id"] for c in dataset["categories"]))) == {int}


def _check_entries(json_file: str, dataset: dict) -> None:
    """Raise the one-line error for the first entry without its required keys, the first id that
    appears twice, or a category id that is not an integer."""
    for key, required in _REQUIRED_KEYS.items():
        seen = set()
        for index, entry in enumerate(dataset[key]):
            if not (isinstance(entry, dict) and all(k in entry for k in required)):
                raise ValueError(f"{json_file}: {key}[{index}] lacks one of {list(required)}")
            if entry["id"] in seen:
                raise ValueError(f"{json_file}: id {entry['id']!r} appears twice in '{key}'")
            seen.add(entry["id"])
    if not all(isinstance(c["id"], int) for c in dataset["categories"]):  # sorted for the mapping
        raise ValueError(f"{json_file}: category ids must be integers")


_NUMBERS, _SEGMENTATIONS = {int, float}, {list, dict, type(None)}


def _annotations_pass(annotations: List[dict], coco: pycocotools.coco.COCO) -> bool:
    """Whether every annotation refers to a known image and category and has a well-formed box and
    segmentation (whole-list operations; :func:`_check_annotations` names what fails)."""
    try:
        return _annotation_lists_pass(annotations, coco)
    except TypeError:  # e.g. an unhashable id
        return False


def _annotation_lists_pass(annotations: List[dict], coco: pycocotools.coco.COCO) -> bool:
    if not set(map(operator.itemgetter("image_id"), annotations)) <= coco.imgs.keys():
        return False
    if not set(map(operator.itemgetter("category_id"), annotations)) <= coco.cats.keys():
        return False
    boxes = list(map(operator.itemgetter("bbox"), annotations))
    if not (set(map(type, boxes)) <= {list} and set(map(len, boxes)) <= {4}):
        return False
    if not set(map(type, itertools.chain.from_iterable(boxes))) <= _NUMBERS:
        return False
    segmentations = [a.get("segmentation") for a in annotations]
    if not set(map(type, segmentations)) <= _SEGMENTATIONS:
        return False
    polygon_lists = (s for s in segmentations if type(s) is list)
    return set(map(type, itertools.chain.from_iterable(polygon_lists))) <= {list}


def _check_annotations(json_file: str, annotations: List[dict], coco: pycocotools.coco.COCO) -> None:
    """Raise the one-line error for the first annotation that load_coco_json would drop silently or
    fail on unclearly: an unknown image or category, a malformed box or segmentation."""
    for ann in annotations:
        where = f"{json_file}: annotation id {ann['id']}"
        bbox, segm = ann["bbox"], ann.get("segmentation")
        if ann["image_id"] not in coco.imgs:
            raise ValueError(f"{where} refers to image id {ann['image_id']!r}, not in 'images'")
        if ann["category_id"] not in coco.cats:
            raise ValueError(
                f"{where} has category_id {ann['category_id']!r}, which is not in 'categories' "
                f"(ids {sorted(coco.cats)})"
            )
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
            raise ValueError(f"{where} has bbox {bbox!r}; expected [x, y, w, h]")
        if not (segm is None or isinstance(segm, dict) or all(isinstance(p, list) for p in segm)):
            raise ValueError(f"{where} has a segmentation that is neither polygons nor an RLE dict")


def _annotation_area(ann: dict, image: dict) -> float:
    """The area of an annotation's mask (polygons or RLE), or of its box when it has none."""
    segm = ann.get("segmentation")
    polygons = [p for p in segm if len(p) >= 6 and len(p) % 2 == 0] if isinstance(segm, list) else None
    if isinstance(segm, dict) or polygons:
        height, width = image["height"], image["width"]
        rles = pycocotools.mask.frPyObjects(segm if isinstance(segm, dict) else polygons, height, width)
        merged = pycocotools.mask.merge(rles) if isinstance(rles, list) else rles
        return float(pycocotools.mask.area(merged))
    return float(ann["bbox"][2] * ann["bbox"][3])


def _fill_in_optional_fields(dataset: dict, images: Dict[Any, dict]) -> Tuple[int, int]:
    """Fill in what labelling tools often leave out and pycocotools' evaluation reads: an
    annotation's ``area`` (of its mask, or its box) and ``iscrowd`` (0).

    Args:
        dataset: the parsed file, checked; changed in place.
        images: image id -> image entry.

    Returns:
        how many annotations got an ``area``, and how many an ``iscrowd``.
    """
    num_area = num_iscrowd = 0
    for ann in [a for a in dataset["annotations"] if "iscrowd" not in a or "area" not in a]:
        if "iscrowd" not in ann:
            ann["iscrowd"] = 0
            num_iscrowd += 1
        if "area" not in ann:
            ann["area"] = _annotation_area(ann, images[ann["image_id"]])
            num_area += 1
    return num_area, num_iscrowd


def _categories_metadata(categories: List[dict]) -> Dict[str, Any]:
    """``thing_classes`` and ``thing_dataset_id_to_contiguous_id`` of a file's ``categories``:
    load_coco_json's mapping, which it makes only for a named data set and registration needs
    before any load."""
    by_id = {c["id"]: c for c in categories}
    cat_ids = sorted(by_id)
    return dict(
        thing_classes=[str(by_id[i]["name"]) for i in cat_ids],
        thing_dataset_id_to_contiguous_id={c: i for i, c in enumerate(cat_ids)},
    )


def _categories(coco: pycocotools.coco.COCO) -> Dict[str, Any]:
    """:func:`_categories_metadata` of a parsed file."""
    return _categories_metadata(list(coco.cats.values()))


def _clean_box(obj: dict, width: int, height: int) -> Optional[str]:
    """Clip an annotation's XYWH ``bbox`` to its image in place; return why to skip it, "clipped" or None."""
    x, y, w, h = obj["bbox"]
    if w <= 0 or h <= 0:
        return "degenerate box"
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        return "box outside the image"
    if (x0, y0, x1, y1) == (x, y, x + w, y + h):
        return None
    obj["bbox"] = [x0, y0, x1 - x0, y1 - y0]
    return "clipped"


def _load_records(json_file: str, image_root: str, coco, check_files: bool) -> List[dict]:
    """Detectron2's ``load_coco_json`` on ``coco`` (the parsed file, :func:`_read_coco`), then the cleaning."""
    # load_coco_json looks pycocotools' COCO up when called: given the parsed file, it parses none.
    with mock.patch.object(pycocotools.coco, "COCO", lambda _path: coco):
        try:
            records = load_coco_json(json_file, image_root, extra_annotation_keys=["id"])
        except (AssertionError, KeyError, ValueError) as e:  # e.g. an annotation with "ignore"
            raise ValueError(f"{json_file}: {e}".replace("\n", " ")) from e
    missing = [r for r in records if not os.path.isfile(r["file_name"])] if check_files else []
    if missing:
        others = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise ValueError(
            f"{missing[0]['file_name']}: image file of image id {missing[0]['image_id']} in "
            f"{json_file} does not exist{others}"
        )
    # load_coco_json drops polygons of under 3 points, and annotations left without any, silently.
    objects = [obj for r in records for obj in r["annotations"]]
    raw = [a for a in coco.dataset["annotations"] if type(a.get("segmentation")) is list]
    loaded_polygons = [obj["segmentation"] for obj in objects if type(obj.get("segmentation")) is list]
    num_polygons = sum(map(len, (a["segmentation"] for a in raw))) - sum(map(len, loaded_polygons))
    skipped = collections.defaultdict(list)  # reason -> annotation ids
    if len(loaded_polygons) < len(raw):
        loaded_ids = {obj["id"] for obj in objects}
        skipped["no valid polygon"] = [a["id"] for a in raw if a["id"] not in loaded_ids]
    # Detectron2's mapper takes an image's masks when its first annotation has one, and then needs one
    # in every annotation: in a set with masks, those without one are skipped; boxes only stay boxes.
    num_with_mask = sum(1 for obj in objects if "segmentation" in obj)
    mixed = 0 < num_with_mask < len(objects)  # some with a mask, some without
    id_map, num_clipped = _categories(coco)["thing_dataset_id_to_contiguous_id"], 0
    for record in records:
        kept, width, height = [], record["width"], record["height"]
        for obj in record["annotations"]:
            ann_id = obj.pop("id")
            if "keypoints" in obj:
                del obj["keypoints"]  # no keypoint metadata is registered to go with them
            obj["category_id"] = id_map[obj["category_id"]]
            x, y, w, h = obj["bbox"]
            if mixed and "segmentation" not in obj:
                outcome = "no mask in a set with masks"
            elif w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= width and y + h <= height:
                outcome = None  # inside its image: most boxes
            else:
                outcome = _clean_box(obj, width, height)
            if outcome in (None, "clipped"):
                kept.append(obj)
                num_clipped += outcome == "clipped"
            else:
                skipped[outcome].append(ann_id)
        record["annotations"] = kept
    num_skipped = sum(len(ids) for ids in skipped.values())
    if num_skipped or num_polygons or num_clipped:
        parts = [f"{len(ids)} with {why} (ids {first_items(ids)})" for why, ids in skipped.items() if ids]
        logger.warning(
            "%s: skipped %d annotations%s; dropped %d polygons with fewer than 3 points; "
            "clipped %d boxes to their image",
            json_file,
            num_skipped,
            f" ({'; '.join(parts)})" if parts else "",
            num_polygons,
            num_clipped,
        )
    if any(coco.filled_in_counts):
        logger.info(
            "%s: filled in 'area' of %d annotations (of the mask, or the box without one) and "
            "'iscrowd'=0 of %d annotations, which the file leaves out",
            json_file,
            *coco.filled_in_counts,
        )
    num_empty = sum(1 for r in records if not r["annotations"])
    msg = "%s: %d images have no annotations (kept for evaluation; filter_empty drops them)"
    logger.info(msg, json_file, num_empty)
    return records


def load_coco_instances_checked(json_file: str, image_root: str) -> List[Dict[str, Any]]:
    """Load a COCO instances file as Detectron2 dataset dicts (as ``load_coco_json`` does), checked.

    Args:
        json_file: COCO instances JSON file.
        image_root: folder that the images' ``file_name`` entries are relative to.

    Returns:
        one dataset dict per image, including images without annotations.
    """
    with _garbage_collection_paused():
        return _load_records(json_file, image_root, _read_coco(json_file), check_files=True)


@contextlib.contextmanager
def _garbage_collection_paused():
    """Pause Python's cyclic garbage collector while a file is parsed and loaded: the millions of
    dicts and lists that a large set's parse creates (none of them in a reference cycle) would
    otherwise trigger collections that walk all of them again and again, about twice the parse's
    own time for a COCO-train-sized file."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


_SCAN_CHUNK = 8 << 20  # bytes read at a time when scanning a file for its categories


def _scan_coco_file(json_file: str) -> Tuple[Optional[list], bool]:
    """What registration needs from a COCO instances file without parsing it: its ``categories``
    list and whether any annotation can have a mask. Reads the file in chunks (little memory) and
    decodes only the list that follows a ``"categories"`` key.

    Returns:
        ``(categories, may_have_masks)``: the categories, or None when the file has not exactly one
        ``"categories"`` list of ``{"id", "name", ...}`` entries (the caller then parses the file, which
        names what is wrong); whether the text ``"segmentation"`` occurs in the file.
    """
    key, mask_key = b'"categories"', b'"segmentation"'
    positions, may_have_masks, offset, tail = [], False, 0, b""
    with open(json_file, "rb") as f:
        while True:
            chunk = f.read(_SCAN_CHUNK)
            if not chunk:
                break
            window = tail + chunk
            start = offset - len(tail)
            found = window.find(key)
            while found != -1:
                positions.append(start + found)
                found = window.find(key, found + 1)
            may_have_masks = may_have_masks or mask_key in window
            tail = window[-(len(mask_key) - 1) :]
            offset += len(chunk)
        candidates = []
        for position in sorted(set(positions)):
            value = _decode_json_list_after(f, position + len(key))
            if isinstance(value, list) and value and all(isinstance(c, dict) and "id" in c and "name" in c for c in value):
                candidates.append(value)
    return (candidates[0] if len(candidates) == 1 else None), may_have_masks


def _decode_json_list_after(f, position: int) -> Optional[list]:
    """The JSON list that follows ``: [`` at ``position`` of the open file ``f``; None if none does."""
    size = 1 << 16
    while True:
        f.seek(position)
        data = f.read(size)
        text = data.decode("utf-8", errors="ignore").lstrip()
        if not text.startswith(":"):
            return None
        text = text[1:].lstrip()
        if not text.startswith("["):
            return None
        try:
            return json.JSONDecoder().raw_decode(text)[0]
        except json.JSONDecodeError:
            if len(data) < size:  # the whole rest of the file, and still no complete list
                return None
            size *= 4


def _registered_loader(name: str, json_file: str, image_root: str):
    """DatasetCatalog's loader of a registered set (called at every load: the training set once per
    training process, the evaluation sets at every evaluation): parses and checks the file, and at
    the first load completes the set's metadata; image files are checked until a load succeeds."""
    state = {}

    def load() -> List[Dict[str, Any]]:
        with _garbage_collection_paused():
            coco = _read_coco(json_file)
            records = _load_records(json_file, image_root, coco, "checked" not in state)
        if "checked" not in state:
            _complete_metadata(name, json_file, coco)
        state["checked"] = True
        return records

    return load


def _complete_metadata(name: str, json_file: str, coco: pycocotools.coco.COCO) -> None:
    """Set what the first load of a registered set knows: its annotation count, whether it has masks,
    and ``json_file`` for COCOEvaluator when the file has every field its evaluation reads."""
    meta = MetadataCatalog.get(name)
    if _categories(coco)["thing_classes"] != meta.thing_classes:
        raise ValueError(
            f"{json_file}: its 'categories' {first_items(_categories(coco)['thing_classes'])} differ from "
            f"those read at registration {first_items(meta.thing_classes)}; register the file again"
        )
    annotations = coco.dataset["annotations"]
    facts = {"json_annotation_count": len(annotations)}
    if annotations:
        facts["json_has_masks"] = any(a.get("segmentation") for a in annotations)
    # COCOEvaluator reads the ground truth from "json_file" when a set has one; for a file whose
    # annotations lack fields that its evaluation needs, it builds the ground truth from the loaded set.
    if not any(coco.filled_in_counts):
        facts["json_file"] = json_file
    meta.set(**{k: v for k, v in facts.items() if k not in meta.as_dict()})


def register_coco_instances_checked(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format instance data set in Detectron2's catalogs, checked.

    Registration reads only the file's categories (for the class names) and checks the paths; it
    parses nothing and holds nothing. Each load (``DatasetCatalog.get(name)``) parses and checks the
    file; the first also checks the image files and completes the metadata (``json_file`` for
    COCOEvaluator, ``json_has_masks``, ``json_annotation_count``). A file whose categories cannot be
    read that way is parsed and checked at once, so that its error comes now. Registering the same
    name again with the same files does nothing.

    Args:
        name: data set name for ``cfg.DATASETS.TRAIN``/``TEST``.
        json_file: COCO instances JSON file.
        image_root: folder that the images' ``file_name`` entries are relative to.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        registered = meta.get("registered_json_file", meta.get("json_file"))
        if (registered, meta.get("image_root")) == (json_file, image_root):
            return
        raise ValueError(
            f"data set name {name!r} is already registered (json_file={registered!r}); "
            f"choose another name"
        )
    if not os.path.isfile(json_file):
        raise ValueError(f"{json_file}: COCO json file does not exist")
    try:
        categories, may_have_masks = _scan_coco_file(json_file)
    except OSError as e:
        raise ValueError(f"{json_file}: cannot read the COCO json file ({e.strerror})") from e
    if categories is None or not all(isinstance(c["id"], int) for c in categories):
        categories = _read_coco(json_file).dataset["categories"]  # raises the one-line error
    if not os.path.isdir(image_root):
        raise ValueError(f"{image_root}: image folder of {json_file} does not exist")
    DatasetCatalog.register(name, _registered_loader(name, json_file, image_root))
    meta = MetadataCatalog.get(name).set(
        **_categories_metadata(categories),
        registered_json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )
    if not may_have_masks:
        meta.json_has_masks = False
    logger.info("Registered %r: %d classes, %s, %s", name, len(meta.thing_classes), json_file, image_root)


def check_registered_sets(names) -> None:
    """Load once each set among ``names`` registered by :func:`register_coco_instances_checked` that
    no load has checked yet, so that its errors come now (before training, or before an evaluator is
    built) and its metadata is complete (``json_file`` for COCOEvaluator, ``json_has_masks``).

    Args:
        names: data set names (a name or a list); others are left alone.
    """
    for name in [names] if isinstance(names, str) else list(names):
        meta = MetadataCatalog.get(name).as_dict()
        if "registered_json_file" in meta and "json_annotation_count" not in meta:
            DatasetCatalog.get(name)


def register_coco_from_arg(value: str) -> str:
    """Register the data set of one ``--register-coco NAME=JSON:IMAGE_DIR`` value.

    Args:
        value: the command-line value (:func:`parse_register_coco_arg`).

    Returns:
        the registered name.
    """
    name, json_file, image_root = parse_register_coco_arg(value)
    register_coco_instances_checked(name, json_file, image_root)
    return name


def nothing_to_train_on(error: AssertionError, names) -> Optional[ValueError]:
    """The one-line error for Detectron2's assertion that a training set has no image left to train
    on (``get_detection_dataset_dicts``: "No valid data found in ...", "Dataset '...' is empty!"),
    naming each set and why; None for another assertion.

    Args:
        error: the assertion raised while building the training data loader.
        names: the training set names (``dataloader.train.dataset.names``).
    """
    if not str(error).startswith(("No valid data found in", "Dataset '")):
        return None
    reasons = []
    for name in [names] if isinstance(names, str) else list(names):
        meta = MetadataCatalog.get(name)
        json_file = meta.get("registered_json_file", meta.get("json_file", "its data"))
        count = meta.get("json_annotation_count")
        if count == 0:
            reasons.append(f"{name}: {json_file} has no annotations")
        elif count:
            reasons.append(
                f"{name}: every one of the {count} annotations of {json_file} was skipped or is a crowd "
                f"region (see the warnings above)"
            )
        else:
            reasons.append(f"{name}: no image with an annotation that is not a crowd region")
    return ValueError(f"nothing to train on in dataloader.train.dataset.names={names}: " + "; ".join(reasons))
