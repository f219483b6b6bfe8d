"""Registering a user's COCO-format instance data set, with checks that fail early and clearly.

``train_net.py --register-coco NAME=JSON:IMAGE_DIR`` calls :func:`register_coco_from_arg`, which
parses the value (:func:`parse_register_coco_arg`) and calls
:func:`register_coco_instances_checked`. What happens with each kind of bad input:

================================================  ==============================================
Problem                                           Behaviour
================================================  ==============================================
``NAME=JSON:IMAGE_DIR`` malformed                 ValueError naming the argument and the
                                                  expected form (at argument parsing).
JSON file missing, not valid JSON, or not COCO    ValueError naming the JSON file (at
(no ``images``/``annotations``/``categories``)    registration, before anything else runs).
Image folder missing                              ValueError naming the folder (at registration).
Image file missing                                ValueError naming the file and its image id,
                                                  plus how many others are missing (at load
                                                  time, before training starts).
Image file unreadable or corrupt                  Not checked at load time (that would decode
                                                  every image). During training the
                                                  ``SkippingDatasetMapper`` skips it with a
                                                  warning naming the file (once per file) and
                                                  counts the skips; Detectron2 then samples
                                                  another image.
Annotation with a category id not in              ValueError naming the JSON file and the
``categories``                                    annotation id (at load time).
Image without annotations                         Kept (evaluation uses it); the count is
                                                  logged. Training drops it through Detectron2's
                                                  ``filter_empty`` (LazyConfig
                                                  ``dataloader.train.dataset.filter_empty``,
                                                  yacs ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``;
                                                  on by default).
Box with width or height <= 0                     Annotation skipped; counted in one warning
                                                  line with the first few annotation ids.
Box entirely outside the image                    Annotation skipped; counted in the same line.
Box partly outside the image                      Clipped to the image; counted in the same line.
Polygon with fewer than 3 points (or an odd       That polygon dropped; counted in the same line.
number of coordinates)
Annotation left with no valid polygon             Annotation skipped; counted in the same line.
================================================  ==============================================

Other malformed entries (an image without ``id``/``file_name``/``height``/``width``, an
annotation without ``id``/``image_id``/``category_id``/``bbox``, duplicate ids, an annotation
of an image id that is not in ``images``) raise ValueError naming the JSON file and the entry.
Annotations without a ``segmentation`` key are kept as boxes; RLE masks are kept as they are.
Keypoints are not loaded.
"""

import json
import logging
import os
from functools import partial
from typing import Any, Dict, List, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

logger = logging.getLogger(__name__)

__all__ = [
    "parse_register_coco_arg",
    "register_coco_from_arg",
    "register_coco_instances_checked",
    "load_coco_instances_checked",
    "read_coco_json",
    "num_classes_of",
]

_MAX_IDS_SHOWN = 5  # annotation ids named in the summary line of skipped annotations
_COCO_KEYS = ("images", "annotations", "categories")
_SKIP_REASONS = ("degenerate box", "box outside the image", "no valid polygon")


def parse_register_coco_arg(value: str) -> Tuple[str, str, str]:
    """Split ``NAME=JSON:IMAGE_DIR`` into its three parts.

    The name ends at the first ``=`` and the JSON path at the first ``:`` after it, so names
    cannot contain ``=`` and JSON paths cannot contain ``:``; the image folder may contain both.

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


def read_coco_json(json_file: str) -> Dict[str, Any]:
    """Read a COCO instances JSON file and check its top-level structure and categories.

    Args:
        json_file: path of the file.

    Returns:
        the parsed JSON (a dict with at least ``images``, ``annotations``, ``categories``).
    """
    if not os.path.isfile(json_file):
        raise ValueError(f"{json_file}: COCO json file does not exist")
    try:
        with open(json_file) as f:
            coco = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{json_file}: not valid JSON ({e})") from e
    except OSError as e:
        raise ValueError(f"{json_file}: cannot read the COCO json file ({e.strerror})") from e
    if not isinstance(coco, dict):
        raise ValueError(
            f"{json_file}: not a COCO instances file (top level is a {type(coco).__name__}; "
            f"expected an object with keys {list(_COCO_KEYS)})"
        )
    missing = [k for k in _COCO_KEYS if not isinstance(coco.get(k), list)]
    if missing:
        raise ValueError(
            f"{json_file}: not a COCO instances file (no list {missing}; expected keys "
            f"{list(_COCO_KEYS)})"
        )
    if not coco["categories"]:
        raise ValueError(f"{json_file}: 'categories' is empty; expected at least one category")
    seen = set()
    for index, cat in enumerate(coco["categories"]):
        if not (isinstance(cat, dict) and isinstance(cat.get("id"), int) and "name" in cat):
            raise ValueError(
                f"{json_file}: categories[{index}] = {cat!r}; expected {{'id': int, 'name': str}}"
            )
        if cat["id"] in seen:
            raise ValueError(f"{json_file}: category id {cat['id']} appears twice in 'categories'")
        seen.add(cat["id"])
    return coco


def _category_map(coco: Dict[str, Any]) -> Tuple[List[str], Dict[int, int]]:
    """Class names in category-id order, and COCO category id -> contiguous id (0..K-1)."""
    categories = sorted(coco["categories"], key=lambda c: c["id"])
    return [str(c["name"]) for c in categories], {c["id"]: i for i, c in enumerate(categories)}


def _check_images(json_file: str, image_root: str, images: List[Any]) -> Dict[Any, dict]:
    """Image id -> image entry; every entry complete, ids unique, every file present."""
    by_id: Dict[Any, dict] = {}
    for index, img in enumerate(images):
        if not (
            isinstance(img, dict) and all(k in img for k in ("id", "file_name", "height", "width"))
        ):
            raise ValueError(
                f"{json_file}: images[{index}] lacks one of 'id', 'file_name', 'height', 'width'"
            )
        if img["id"] in by_id:
            raise ValueError(f"{json_file}: image id {img['id']} appears twice in 'images'")
        by_id[img["id"]] = img
    missing = [
        img
        for img in by_id.values()
        if not os.path.isfile(os.path.join(image_root, img["file_name"]))
    ]
    if missing:
        first = missing[0]
        others = f" (and {len(missing) - 1} more missing)" if len(missing) > 1 else ""
        raise ValueError(
            f"{os.path.join(image_root, first['file_name'])}: image file of image id {first['id']} "
            f"in {json_file} does not exist{others}"
        )
    return by_id


def _first_ids(ids: List[Any]) -> str:
    shown = ", ".join(str(i) for i in ids[:_MAX_IDS_SHOWN])
    return f"[{shown}, ...]" if len(ids) > _MAX_IDS_SHOWN else f"[{shown}]"


class _Tally:
    """Counts of annotations skipped or changed while loading, and the first ids of each."""

    def __init__(self):
        self.skipped: Dict[str, List[Any]] = {reason: [] for reason in _SKIP_REASONS}
        self.num_clipped = 0
        self.num_polygons_dropped = 0

    def skip(self, reason: str, ann_id: Any) -> None:
        self.skipped[reason].append(ann_id)

    def log(self, json_file: str) -> None:
        num_skipped = sum(len(ids) for ids in self.skipped.values())
        if not (num_skipped or self.num_clipped or self.num_polygons_dropped):
            return
        parts = [
            f"{len(ids)} with {reason} (ids {_first_ids(ids)})"
            for reason, ids in self.skipped.items()
            if ids
        ]
        logger.warning(
            "%s: skipped %d annotations%s; dropped %d polygons with fewer than 3 points; "
            "clipped %d boxes to their image",
            json_file,
            num_skipped,
            f" ({'; '.join(parts)})" if parts else "",
            self.num_polygons_dropped,
            self.num_clipped,
        )


def _clean_annotation(
    json_file: str, ann: Any, image: dict, id_map: Dict[int, int], tally: _Tally
) -> Any:
    """Detectron2's annotation dict for one COCO annotation, or None to skip it."""
    ann_id = ann["id"]
    if ann["category_id"] not in id_map:
        raise ValueError(
            f"{json_file}: annotation id {ann_id} has category_id {ann['category_id']!r}, which is "
            f"not in 'categories' (ids {sorted(id_map)})"
        )
    bbox = ann["bbox"]
    if not (
        isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)
    ):
        raise ValueError(
            f"{json_file}: annotation id {ann_id} has bbox {bbox!r}; expected [x, y, w, h]"
        )
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        tally.skip("degenerate box", ann_id)
        return None
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + w, image["width"]), min(y + h, image["height"])
    if x1 <= x0 or y1 <= y0:
        tally.skip("box outside the image", ann_id)
        return None
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
        tally.num_clipped += 1

    obj = {
        "bbox": [x0, y0, x1 - x0, y1 - y0],
        "bbox_mode": BoxMode.XYWH_ABS,
        "category_id": id_map[ann["category_id"]],
        "iscrowd": int(ann.get("iscrowd", 0)),
    }
    segm = ann.get("segmentation")
    if isinstance(segm, dict):  # RLE
        if isinstance(segm.get("counts"), list):  # uncompressed: Detectron2 wants compressed RLE
            from pycocotools import mask as mask_util

            segm = mask_util.frPyObjects(segm, *segm["size"])
        obj["segmentation"] = segm
    elif segm is not None:
        polygons = [p for p in segm if isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0]
        tally.num_polygons_dropped += len(segm) - len(polygons)
        if not polygons:
            tally.skip("no valid polygon", ann_id)
            return None
        obj["segmentation"] = polygons
    return obj


def load_coco_instances_checked(json_file: str, image_root: str) -> List[Dict[str, Any]]:
    """Load a COCO instances file as Detectron2 dataset dicts, applying the module's checks.

    Category ids become contiguous ids 0..K-1 in the order of the COCO ids, as in Detectron2's
    ``load_coco_json``; images are sorted by id.

    Args:
        json_file: COCO instances JSON file.
        image_root: folder that the images' ``file_name`` entries are relative to.

    Returns:
        list of dataset dicts (``file_name``, ``height``, ``width``, ``image_id``,
        ``annotations``), one per image, including images without annotations.
    """
    coco = read_coco_json(json_file)
    if not os.path.isdir(image_root):
        raise ValueError(f"{image_root}: image folder of {json_file} does not exist")
    _, id_map = _category_map(coco)
    images = _check_images(json_file, image_root, coco["images"])

    annotations_of: Dict[Any, List[dict]] = {image_id: [] for image_id in images}
    seen_ids = set()
    tally = _Tally()
    for index, ann in enumerate(coco["annotations"]):
        if not (
            isinstance(ann, dict)
            and all(k in ann for k in ("id", "image_id", "category_id", "bbox"))
        ):
            raise ValueError(
                f"{json_file}: annotations[{index}] lacks one of 'id', 'image_id', 'category_id', "
                f"'bbox'"
            )
        if ann["id"] in seen_ids:
            raise ValueError(f"{json_file}: annotation id {ann['id']} appears twice")
        seen_ids.add(ann["id"])
        if ann["image_id"] not in images:
            raise ValueError(
                f"{json_file}: annotation id {ann['id']} refers to image id {ann['image_id']!r}, "
                f"which is not in 'images'"
            )
        obj = _clean_annotation(json_file, ann, images[ann["image_id"]], id_map, tally)
        if obj is not None:
            annotations_of[ann["image_id"]].append(obj)
    tally.log(json_file)

    records = [
        {
            "file_name": os.path.join(image_root, img["file_name"]),
            "height": img["height"],
            "width": img["width"],
            "image_id": image_id,
            "annotations": annotations_of[image_id],
        }
        for image_id, img in sorted(images.items(), key=lambda item: item[0])
    ]
    num_empty = sum(1 for r in records if not r["annotations"])
    logger.info(
        "Loaded %d images with %d annotations from %s; %d images have no annotations (kept for "
        "evaluation; training drops them when filter_empty is on)",
        len(records),
        sum(len(r["annotations"]) for r in records),
        json_file,
        num_empty,
    )
    return records


def register_coco_instances_checked(name: str, json_file: str, image_root: str) -> None:
    """Register a COCO-format instance data set in Detectron2's catalogs, checked.

    The JSON file and image folder are checked now; images and annotations when the data set
    is first loaded (``DatasetCatalog.get(name)``), see the module docstring. Registering the
    same name again with the same files does nothing.

    Args:
        name: data set name for ``cfg.DATASETS.TRAIN``/``TEST``.
        json_file: COCO instances JSON file.
        image_root: folder that the images' ``file_name`` entries are relative to.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (
            getattr(meta, "json_file", None) == json_file
            and getattr(meta, "image_root", None) == image_root
        ):
            return
        raise ValueError(
            f"data set name {name!r} is already registered (json_file="
            f"{getattr(meta, 'json_file', None)!r}); choose another name"
        )
    thing_classes, id_map = _category_map(read_coco_json(json_file))
    if not os.path.isdir(image_root):
        raise ValueError(f"{image_root}: image folder of {json_file} does not exist")
    DatasetCatalog.register(name, partial(load_coco_instances_checked, json_file, image_root))
    MetadataCatalog.get(name).set(
        thing_classes=thing_classes,
        thing_dataset_id_to_contiguous_id=id_map,
        json_file=json_file,
        image_root=image_root,
        evaluator_type="coco",
    )
    logger.info(
        "Registered %r: %d classes, %s, images in %s",
        name,
        len(thing_classes),
        json_file,
        image_root,
    )


def register_coco_from_arg(value: str) -> str:
    """Register the data set of one ``--register-coco NAME=JSON:IMAGE_DIR`` value.

    Args:
        value: the command-line value; see :func:`parse_register_coco_arg`.

    Returns:
        the registered name.
    """
    name, json_file, image_root = parse_register_coco_arg(value)
    register_coco_instances_checked(name, json_file, image_root)
    return name


def num_classes_of(dataset_name: str) -> int:
    """Number of classes (``len(thing_classes)``) of a registered data set.

    Args:
        dataset_name: a name registered in Detectron2's catalogs.

    Returns:
        the number of thing classes, for ``MODEL.ROI_HEADS.NUM_CLASSES`` and the like.
    """
    if dataset_name not in DatasetCatalog.list():
        raise ValueError(
            f"data set {dataset_name!r} is not registered; register it with "
            f"--register-coco NAME=JSON:IMAGE_DIR or register_coco_instances_checked()"
        )
    thing_classes = getattr(MetadataCatalog.get(dataset_name), "thing_classes", None)
    if not thing_classes:
        raise ValueError(f"data set {dataset_name!r} has no thing_classes in its metadata")
    return len(thing_classes)
