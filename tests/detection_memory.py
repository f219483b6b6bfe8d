"""Run one detector on one image in a process of its own, and report the process's peak memory.

Used by tests/test_deploy_export.py as a child process, so that the peak resident set belongs to
one model form alone::

    python3 tests/detection_memory.py --image big.png --output out.npz --predictor config.yaml model.pth
    python3 tests/detection_memory.py --image big.png --output out.npz --exported export_folder

Prints one JSON line, ``{"peak_rss_mib": ..., "detections": ...}``, and writes the detections to
``--output`` (``boxes``, ``scores``, ``classes``, the bool masks bit-packed as ``packed_masks``
with their ``mask_shape``).
"""

import argparse
import json

import cv2
import numpy as np
import torch


def _peak_rss_mib() -> float:
    """The process's peak resident set since :func:`_reset_peak_rss` (``VmHWM``). Not ``getrusage``'s
    ``ru_maxrss``: started by ``subprocess`` (vfork, then exec), a process inherits its parent's high
    water mark in ``ru_maxrss``, so that a test process holding 2 GB would read as 2 GB here."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def _reset_peak_rss() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", required=True)
    parser.add_argument("--output", required=True, help=".npz file for the detections")
    form = parser.add_mutually_exclusive_group(required=True)
    form.add_argument(
        "--predictor", nargs=2, metavar=("CONFIG", "CHECKPOINT"), help="the folded PyTorch model"
    )
    form.add_argument("--exported", metavar="FOLDER", help="an export folder")
    parser.add_argument("--score-threshold", type=float, default=0.0)
    args = parser.parse_args()
    _reset_peak_rss()

    if args.predictor:
        from rsb_backbone.inference import LazyConfigPredictor

        detector = LazyConfigPredictor(*args.predictor, score_threshold=args.score_threshold, fuse=True)
    else:
        from rsb_backbone.export import ExportedDetector

        detector = ExportedDetector(args.exported)
    image = cv2.imread(args.image)
    with torch.no_grad():
        instances = detector(image)["instances"].to("cpu")
    masks = instances.pred_masks.numpy()
    np.savez(
        args.output,
        boxes=instances.pred_boxes.tensor.numpy(),
        scores=instances.scores.numpy(),
        classes=instances.pred_classes.numpy(),
        packed_masks=np.packbits(masks, axis=-1),
        mask_shape=np.array(masks.shape),
    )
    print(json.dumps({"peak_rss_mib": _peak_rss_mib(), "detections": len(instances)}))


if __name__ == "__main__":
    main()
