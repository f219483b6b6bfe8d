#!/usr/bin/env python3
"""Run an RSB detector on images or videos: annotated pictures and COCO-format results out.

Examples::

    # The CPU shapes demo (train it first with train_net.py, see README.md):
    python3 projects/predict_demo/predict.py \\
        --config-file configs/shapes/mask_rcnn_rsb_r50_fpn_shapes.py \\
        --checkpoint output/shapes/mask_rcnn/model_final.pth \\
        --input datasets/shapes/val --coco-json datasets/shapes/val.json \\
        --output output/predict_demo

    # A yacs config, a glob and a video; overrides after the flags:
    python3 projects/predict_demo/predict.py \\
        --config-file configs/yacs/mask_rcnn_rsb_r50_fpn_1x.yaml --checkpoint model_final.pth \\
        --input "photos/*.jpg" clip.mp4 --device auto --confidence-threshold 0.7

    # mmdetection's released RSB Mask R-CNN by name (downloaded and converted once, then cached):
    python3 projects/predict_demo/predict.py \\
        --config-file configs/COCO/mask_rcnn_rsb_r50_fpn_1x_mmdet.py \\
        --checkpoint mmdet://mask_rcnn_rsb_r50_fpn_1x --input photos/

``--config-file`` takes a LazyConfig (``.py``, or the ``config.yaml`` that train_net.py saves)
or a yacs config (``configs/yacs``). ``--checkpoint`` takes a train_net.py checkpoint, a
published file (``.pth`` or ``.safetensors``, see projects/publish_model) or the name of one of
mmdetection's released detectors (``mmdet://...``, docs/mmdet_checkpoints.md). Class names and
category ids are those stored with the model (train_net.py stores the training set's), else
those of the config's test data set: no data set needs registering to predict.
"""

import argparse
import json
import logging
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from tqdm import tqdm

from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import ColorMode, Visualizer

from rsb_backbone.utils.errors import run_command
from rsb_backbone.inference import (
    build_predictor,
    coco_image_ids,
    collect_inputs,
    contiguous_to_dataset_ids,
    instances_to_coco_results,
)

logger = logging.getLogger("rsb_detectron2.predict_demo")

_VIDEO_CODEC = "mp4v"  # MPEG-4 part 2: written by every OpenCV build, opened by common players
_DEFAULT_FPS = 25.0  # when the input video does not say


def build_argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", required=True, help="LazyConfig (.py, config.yaml) or yacs (.yaml)")
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="detector checkpoint (model_final.pth), published .pth/.safetensors, or a released "
        "detector's name (mmdet://mask_rcnn_rsb_r50_fpn_1x, docs/mmdet_checkpoints.md)",
    )
    parser.add_argument(
        "--input", required=True, nargs="+",
        help="images, folders (their images, not recursive), quoted globs or videos",
    )  # fmt: skip
    parser.add_argument("--output", default="output/predict_demo", help="folder for pictures and JSON")
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="smallest score drawn and saved"
    )
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument(
        "--precision", default="float32", choices=("float32", "bfloat16", "float16"),
        help="compute under torch.autocast in bfloat16 (CUDA, CPUs with bf16) or float16 (CUDA); "
        "the weights and the results stay float32",
    )  # fmt: skip
    parser.add_argument("--scale", type=float, default=1.0, help="size of the pictures relative to the input")
    parser.add_argument(
        "--json", default="predictions.json", help="name of the COCO results file in --output"
    )
    parser.add_argument(
        "--coco-json",
        help="COCO file whose image ids the results use (images matched by file name), so the "
        "results can be evaluated against it; without it images are numbered 1, 2, ...",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[],
        help="config overrides: KEY=VALUE for LazyConfigs, KEY VALUE (or KEY=VALUE) for yacs",
    )  # fmt: skip
    return parser


class Annotator:
    """Runs the predictor on one image and keeps its detections as COCO results."""

    def __init__(self, predictor, *, category_ids: Optional[Dict[int, int]], scale: float = 1.0):
        self.predictor = predictor
        self.scale = scale
        self.metadata = getattr(predictor, "metadata", None)
        self.category_ids = category_ids
        self.results: List[dict] = []

    def __call__(self, image_bgr: np.ndarray, image_id: int) -> np.ndarray:
        """Detect, record the results under ``image_id``; return the annotated BGR picture."""
        instances = self.predictor(image_bgr)["instances"].to("cpu")
        self.results += instances_to_coco_results(instances, image_id, category_ids=self.category_ids)
        visualizer = Visualizer(
            image_bgr[:, :, ::-1], self.metadata, scale=self.scale, instance_mode=ColorMode.IMAGE
        )
        return visualizer.draw_instance_predictions(instances).get_image()[:, :, ::-1]


def _unique_path(folder: str, name: str, used: set) -> str:
    stem, ext = os.path.splitext(name)
    candidate, n = name, 1
    while candidate in used:
        candidate, n = f"{stem}_{n}{ext}", n + 1
    used.add(candidate)
    return os.path.join(folder, candidate)


def _write_image(path: str, image: np.ndarray) -> None:
    if not cv2.imwrite(path, image):
        raise OSError(f"{path}: OpenCV could not write the picture")


def annotate_video(
    annotator: Annotator, video: str, output_path: str, *, first_id: int, names: Dict[int, str]
) -> int:
    """Annotate every frame of ``video`` into ``output_path`` (mp4); return the next free id.

    Frames get the image ids ``first_id``, ``first_id + 1``, ...; ``names`` records them.
    """
    capture = cv2.VideoCapture(video)
    if not capture.isOpened():
        raise ValueError(f"--input {video}: OpenCV cannot open the video")
    fps = capture.get(cv2.CAP_PROP_FPS) or _DEFAULT_FPS
    total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or None
    writer = None
    image_id = first_id
    try:
        with tqdm(total=total, desc=os.path.basename(video), unit="frame") as progress:
            while True:
                ok, frame = capture.read()
                if not ok:
                    break
                picture = annotator(frame, image_id)
                if writer is None:  # the picture's size, which --scale may change
                    size = (picture.shape[1], picture.shape[0])
                    writer = cv2.VideoWriter(output_path, cv2.VideoWriter_fourcc(*_VIDEO_CODEC), fps, size)
                    if not writer.isOpened():
                        raise OSError(f"{output_path}: OpenCV cannot write {_VIDEO_CODEC} video")
                writer.write(picture)
                names[image_id] = f"{video}#frame={image_id - first_id}"
                image_id += 1
                progress.update(1)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if image_id == first_id:
        raise ValueError(f"--input {video}: OpenCV read no frames from the video")
    logger.info("%s: %d frames annotated into %s", video, image_id - first_id, output_path)
    return image_id


def main(argv=None) -> int:
    args = build_argument_parser().parse_args(argv)
    images, videos = collect_inputs(args.input)
    known_ids = coco_image_ids(args.coco_json) if args.coco_json else None
    if known_ids is not None:
        if videos:
            raise ValueError("--coco-json gives ids to image files; pass videos in a run without it")
        unknown = [p for p in images if os.path.basename(p) not in known_ids]
        if unknown:
            raise ValueError(
                f"{unknown[0]} is not in --coco-json {args.coco_json} ({len(unknown)} inputs are not)"
            )

    predictor = build_predictor(
        args.config_file,
        args.checkpoint,
        device=args.device,
        score_threshold=args.confidence_threshold,
        opts=args.opts,
        precision=args.precision,
    )
    category_ids = contiguous_to_dataset_ids(getattr(predictor, "metadata", None))
    annotator = Annotator(predictor, category_ids=category_ids, scale=args.scale)
    os.makedirs(args.output, exist_ok=True)
    used_names: set = set()
    names: Dict[int, str] = {}
    next_id = 1
    for path in tqdm(images, desc="images", unit="image", disable=not images):
        image_id = known_ids[os.path.basename(path)] if known_ids is not None else next_id
        next_id += 1
        picture = annotator(read_image(path, format="BGR"), image_id)
        _write_image(_unique_path(args.output, os.path.basename(path), used_names), picture)
        names[image_id] = path
    for video in videos:
        stem = os.path.splitext(os.path.basename(video))[0]
        output_path = _unique_path(args.output, f"{stem}.mp4", used_names)
        next_id = annotate_video(annotator, video, output_path, first_id=next_id, names=names)

    json_path = os.path.join(args.output, args.json)
    with open(json_path, "w") as f:
        json.dump(annotator.results, f)
    with open(os.path.join(args.output, "image_ids.json"), "w") as f:
        json.dump({str(k): v for k, v in names.items()}, f, indent=1)
    logger.info(
        "%d detections on %d images/frames: pictures in %s, COCO results in %s",
        len(annotator.results), len(names), args.output, json_path,
    )  # fmt: skip
    return 0


if __name__ == "__main__":
    run_command(main)
