"""The inputs of prediction commands: image and video files named by paths, folders or glob
patterns (``--input``), and the image ids of a COCO file (``--coco-json``), so that results can be
evaluated against it."""

import glob
import json
import os
from typing import Dict, List, Tuple

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm")
_GLOB_CHARACTERS = "*?["


def collect_inputs(specs: List[str]) -> Tuple[List[str], List[str]]:
    """Expand ``--input`` values into image files and video files, each list in input order.

    Args:
        specs: file paths, folder paths or glob patterns.

    Returns:
        ``(images, videos)``.
    """
    images, videos = [], []
    for spec in specs:
        if os.path.isdir(spec):
            found = sorted(
                os.path.join(spec, name)
                for name in os.listdir(spec)
                if name.lower().endswith(IMAGE_EXTENSIONS)
            )
            if not found:
                raise ValueError(f"--input {spec}: the folder has no {'/'.join(IMAGE_EXTENSIONS)} images")
            images += found
        elif os.path.isfile(spec):
            if spec.lower().endswith(VIDEO_EXTENSIONS):
                videos.append(spec)
            elif spec.lower().endswith(IMAGE_EXTENSIONS):
                images.append(spec)
            else:
                raise ValueError(
                    f"--input {spec}: expected an image ({', '.join(IMAGE_EXTENSIONS)}) or a video "
                    f"({', '.join(VIDEO_EXTENSIONS)})"
                )
        elif any(c in spec for c in _GLOB_CHARACTERS):
            found = sorted(p for p in glob.glob(spec) if p.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ValueError(f"--input {spec!r}: the pattern matches no images")
            images += found
        else:
            raise FileNotFoundError(f"--input {spec}: no such file or folder")
    return images, videos


def coco_image_ids(coco_json: str) -> Dict[str, int]:
    """File name (without folders) -> image id, from a COCO file's ``images``."""
    with open(coco_json) as f:
        images = json.load(f).get("images")
    if not isinstance(images, list):
        raise ValueError(f"--coco-json {coco_json}: no 'images' list; expected a COCO instances file")
    ids: Dict[str, int] = {}
    for image in images:
        name = os.path.basename(image["file_name"])
        if name in ids:
            raise ValueError(f"--coco-json {coco_json}: two images are named {name}; cannot match by name")
        ids[name] = image["id"]
    return ids
