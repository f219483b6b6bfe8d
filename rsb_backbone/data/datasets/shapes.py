"""A small synthetic COCO-format instance-segmentation data set: circles, squares, triangles.

Every image has its own random size (width != height), a noisy gradient background and 1 to 4
solid-coloured objects whose side is 25-45% of the image's short side. Colours are drawn
independently of the class, so only the shape tells the classes apart. Image ``i`` of a split
depends only on ``(seed, split, i)``: the same seed gives the same files, byte for byte.

Layout written under ``output_dir``::

    train/000001.jpg ...   train.json
    val/000001.jpg ...     val.json

:mod:`.builtin` registers the generated set; ``projects/shapes_demo/generate_shapes.py`` writes
one from the command line.
"""

import json
import logging
import math
import os
import shutil
import tempfile
from typing import Dict, List, Tuple

import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "SHAPES_CATEGORIES",
    "SPLITS",
    "generate_shapes_dataset",
    "ensure_shapes_dataset",
    "shapes_dataset_paths",
]

# COCO categories of the data set; contiguous ids 1..3, in the order Detectron2 numbers them.
SHAPES_CATEGORIES = (
    {"id": 1, "name": "circle"},
    {"id": 2, "name": "square"},
    {"id": 3, "name": "triangle"},
)
SPLITS = ("train", "val")

_MIN_OBJECTS, _MAX_OBJECTS = 1, 4
# Object side as a fraction of the image's short side: large enough to learn in a few hundred
# iterations at Detectron2's smallest anchor sizes, small enough that 2-3 fit side by side.
_MIN_OBJECT_FRACTION, _MAX_OBJECT_FRACTION = 0.25, 0.45
_MAX_PLACEMENT_TRIES = 50
_GAP_PX = 2  # empty pixels kept between the boxes of two objects
_CIRCLE_VERTICES = 32  # the polygon drawn and annotated for a circle
_NOISE_STD = 12.0  # per-pixel background noise, in 0-255 units
_JPEG_QUALITY = 95
_SMALLEST_IMAGE_SIDE = 32
# Saturated colours for objects (RGB); backgrounds are muted, so objects always stand out.
_PALETTE = (
    (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
    (145, 30, 180), (70, 240, 240), (240, 50, 230), (0, 128, 128), (170, 110, 40),
)  # fmt: skip


def _unit_polygon(category_id: int, rotation: float) -> np.ndarray:
    """Vertices of a shape of side 1 centred on the origin, shape (N, 2)."""
    if category_id == 1:
        angles = np.linspace(0.0, 2.0 * math.pi, _CIRCLE_VERTICES, endpoint=False)
    elif category_id == 2:
        angles = np.array([0.25, 0.75, 1.25, 1.75]) * math.pi
    elif category_id == 3:
        angles = np.array([-0.5, 1.0 / 6.0, 5.0 / 6.0]) * math.pi
    else:
        raise ValueError(
            f"category_id={category_id}: expected 1 (circle), 2 (square) or 3 (triangle)"
        )
    angles = angles + rotation
    # A square of side 1 has its corners at radius 1/sqrt(2); circles and triangles use radius 1/2.
    radius = math.sqrt(0.5) if category_id == 2 else 0.5
    return radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted two-colour gradient with pixel noise, uint8 RGB (H, W, 3)."""
    start, end = rng.uniform(60.0, 170.0, size=(2, 3))
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    t = xs / width * math.cos(angle) + ys / height * math.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    image = start + t[..., None] * (end - start)
    image = image + rng.normal(0.0, _NOISE_STD, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _boxes_overlap(a: Tuple[float, ...], b: Tuple[float, ...]) -> bool:
    """Whether two (x0, y0, x1, y1) boxes come closer than ``_GAP_PX``."""
    separated_x = a[2] + _GAP_PX <= b[0] or b[2] + _GAP_PX <= a[0]
    separated_y = a[3] + _GAP_PX <= b[1] or b[3] + _GAP_PX <= a[1]
    return not (separated_x or separated_y)


def _polygon_area(points: np.ndarray) -> float:
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _make_image(
    rng: np.random.Generator, min_size: int, max_size: int
) -> Tuple[np.ndarray, List[Tuple[int, np.ndarray]]]:
    """One image and its objects as (category_id, polygon (N, 2) in pixel coordinates)."""
    import cv2  # only when generating: importing rsb_backbone.data registers this set, needing no OpenCV
    width = int(rng.integers(min_size, max_size + 1))
    height = int(rng.integers(min_size, max_size))
    if height >= width:  # keep every image non-square: heights skip the width's value
        height += 1
    image = _background(rng, height, width)
    num_objects = int(rng.integers(_MIN_OBJECTS, _MAX_OBJECTS + 1))
    colours = rng.permutation(len(_PALETTE))[:num_objects]
    short_side = min(width, height)

    objects: List[Tuple[int, np.ndarray]] = []
    boxes: List[Tuple[float, ...]] = []
    for colour_index in colours:
        category_id = int(rng.integers(1, len(SHAPES_CATEGORIES) + 1))
        side = short_side * rng.uniform(_MIN_OBJECT_FRACTION, _MAX_OBJECT_FRACTION)
        shape = _unit_polygon(category_id, rotation=rng.uniform(0.0, 2.0 * math.pi)) * side
        low, high = shape.min(axis=0), shape.max(axis=0)
        for _ in range(_MAX_PLACEMENT_TRIES):
            centre = rng.uniform(1.0 - low, np.array([width, height]) - 1.0 - high)
            polygon = shape + centre
            box = (*polygon.min(axis=0), *polygon.max(axis=0))
            if not any(_boxes_overlap(box, other) for other in boxes):
                break
        else:  # no free place left in this image
            continue
        boxes.append(box)
        objects.append((category_id, polygon))
        # Detectron2/COCO put pixel centres at +0.5, OpenCV at integers; 4 fractional bits.
        points = np.round((polygon - 0.5) * 16).astype(np.int32)
        cv2.fillPoly(image, [points], color=_PALETTE[colour_index], lineType=cv2.LINE_8, shift=4)
    return image, objects


def _write_split(
    output_dir: str, *, split: str, num_images: int, min_size: int, max_size: int, seed: int
) -> int:
    """Write the images of one split and its COCO json; returns the number of annotations."""
    import cv2
    split_dir = shapes_dataset_paths(output_dir)[split]["image_root"]
    json_path = shapes_dataset_paths(output_dir)[split]["json_file"]
    os.makedirs(split_dir)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng([seed, SPLITS.index(split), index])
        image, objects = _make_image(rng, min_size, max_size)
        image_id = index + 1
        file_name = f"{image_id:06d}.jpg"
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        path = os.path.join(split_dir, file_name)
        if not cv2.imwrite(path, bgr, [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY]):
            raise OSError(f"{path}: OpenCV could not write the image")
        height, width = image.shape[:2]
        images.append({"id": image_id, "file_name": file_name, "height": height, "width": width})
        for category_id, polygon in objects:
            x0, y0 = polygon.min(axis=0)
            x1, y1 = polygon.max(axis=0)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [round(float(v), 2) for v in (x0, y0, x1 - x0, y1 - y0)],
                    "area": round(_polygon_area(polygon), 2),
                    "iscrowd": 0,
                    "segmentation": [[round(float(v), 2) for v in polygon.reshape(-1)]],
                }
            )
    coco = {
        "info": {"description": f"RSB-Detectron2 synthetic shapes, {split} split, seed {seed}"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [dict(c, supercategory="shape") for c in SHAPES_CATEGORIES],
    }
    with open(json_path, "w") as f:
        json.dump(coco, f)
    return len(annotations)


def shapes_dataset_paths(output_dir: str) -> Dict[str, Dict[str, str]]:
    """Where the data set under ``output_dir`` keeps each split, whether it exists yet or not.

    Args:
        output_dir: the data set's folder.

    Returns:
        ``{"train": {"json_file": ..., "image_root": ...}, "val": {...}}``.
    """
    return {
        split: {
            "json_file": os.path.join(output_dir, f"{split}.json"),
            "image_root": os.path.join(output_dir, split),
        }
        for split in SPLITS
    }


def _is_complete(output_dir: str) -> bool:
    paths = shapes_dataset_paths(output_dir)
    return all(
        os.path.isfile(p["json_file"]) and os.path.isdir(p["image_root"]) for p in paths.values()
    )


def generate_shapes_dataset(
    output_dir: str,
    *,
    num_train: int = 200,
    num_val: int = 50,
    min_size: int = 160,
    max_size: int = 256,
    seed: int = 0,
) -> Dict[str, Dict[str, str]]:
    """Write the synthetic shapes data set, atomically.

    The set is written to a temporary folder next to ``output_dir`` and renamed into place, so
    other processes see either nothing or the complete set. If ``output_dir`` appears while this
    call generates (another process won the race), this call's copy is discarded.

    Args:
        output_dir: folder to create; must not exist, or be empty.
        num_train: images in the ``train`` split.
        num_val: images in the ``val`` split.
        min_size: smallest image width/height, in pixels.
        max_size: largest image width/height, in pixels; larger than ``min_size``.
        seed: the same seed gives the same images and annotations.

    Returns:
        ``{"train": {"json_file": ..., "image_root": ...}, "val": {...}}``.

    Raises:
        FileExistsError: when ``output_dir`` exists and is not empty at the start.
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    for name, value in (("num_train", num_train), ("num_val", num_val)):
        if value < 1:
            raise ValueError(f"{name}={value}: expected at least 1 image")
    if not _SMALLEST_IMAGE_SIDE <= min_size < max_size:
        raise ValueError(
            f"min_size={min_size}, max_size={max_size}: expected "
            f"{_SMALLEST_IMAGE_SIDE} <= min_size < max_size (images are never square)"
        )
    if os.path.isfile(output_dir) or (os.path.isdir(output_dir) and os.listdir(output_dir)):
        raise FileExistsError(f"{output_dir}: already exists; delete it or choose another folder")

    parent = os.path.dirname(output_dir)
    os.makedirs(parent, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(output_dir)}.tmp-", dir=parent)
    try:
        num_annotations = {
            split: _write_split(
                tmp_dir,
                split=split,
                num_images=num_images,
                min_size=min_size,
                max_size=max_size,
                seed=seed,
            )
            for split, num_images in (("train", num_train), ("val", num_val))
        }
        os.chmod(tmp_dir, 0o755)  # mkdtemp makes it private (0o700)
        try:
            # Atomic; replaces an empty output_dir, fails when another process's copy is there.
            os.rename(tmp_dir, output_dir)
        except OSError:
            if not _is_complete(output_dir):
                raise
            logger.info("%s appeared meanwhile (another process); discarding this copy", output_dir)
            shutil.rmtree(tmp_dir, ignore_errors=True)
            return shapes_dataset_paths(output_dir)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    logger.info(
        "Wrote the shapes data set to %s: train %d images / %d annotations, val %d / %d",
        output_dir,
        num_train,
        num_annotations["train"],
        num_val,
        num_annotations["val"],
    )
    return shapes_dataset_paths(output_dir)


def ensure_shapes_dataset(root: str, **kwargs) -> Dict[str, Dict[str, str]]:
    """Generate the shapes data set under ``root`` unless it is already there.

    Safe to call from several processes at once (e.g. one per GPU): they may each generate, but
    exactly one copy is renamed into place and the others are discarded.

    Args:
        root: the data set's folder (holding ``train.json``, ``val.json``, ``train/``, ``val/``).
        **kwargs: passed to :func:`generate_shapes_dataset` when the set must be generated; an
            existing set is returned as it is, whatever its parameters.

    Returns:
        the paths, as :func:`generate_shapes_dataset` returns them.
    """
    root = os.path.abspath(os.fspath(root))
    if _is_complete(root):
        return shapes_dataset_paths(root)
    logger.info("Shapes data set not found under %s; generating it", root)
    try:
        return generate_shapes_dataset(root, **kwargs)
    except FileExistsError:
        if _is_complete(root):  # completed by another process between the two checks
            return shapes_dataset_paths(root)
        raise
