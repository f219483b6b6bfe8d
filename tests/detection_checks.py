"""Comparing two sets of detections within the deployment tolerances."""

from typing import Dict

import numpy as np

# Boxes: |a - b| <= 1e-3 px + 1e-6 * |a|, the float32 rounding of a coordinate computed in
# another order (folded norms, another runtime) grows with its size: 1.2e-4 px was the largest
# difference measured at 700 px, in both export formats of the trained shapes detectors.
BOX_ATOL_PX = 1e-3
BOX_RTOL = 1e-6
SCORE_ATOL = 1e-4
MASK_MIN_IOU = 0.99
MASK_PROB_ATOL = 1e-3  # mask probabilities before pasting (when both are float maps)


def _as_numpy(detections) -> Dict[str, np.ndarray]:
    """Instances, or a dict of arrays, -> {"boxes", "scores", "classes"[, "masks"]} numpy arrays."""
    if isinstance(detections, dict):
        return {k: np.asarray(v) for k, v in detections.items()}
    out = {
        "boxes": detections.pred_boxes.tensor.detach().cpu().numpy(),
        "scores": detections.scores.detach().cpu().numpy(),
        "classes": detections.pred_classes.detach().cpu().numpy(),
    }
    if detections.has("pred_masks"):
        out["masks"] = detections.pred_masks.detach().cpu().numpy()
    return out


def _iou(box, boxes):
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: np.prod(np.clip(b[..., 2:] - b[..., :2], 0, None), axis=-1)  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def assert_same_detections(expected, actual, what: str = "") -> int:
    """Assert equal detections: the same number, the same classes, boxes within ``BOX_ATOL_PX``
    (+ ``BOX_RTOL`` relative), scores within ``SCORE_ATOL``, masks (when both have them) with IoU > ``MASK_MIN_IOU``, or
    for float mask probabilities (before pasting) within ``MASK_PROB_ATOL``.

    Detections are paired by class and box overlap, so that near-equal scores listed in another
    order still pair up.

    Returns:
        the number of detections.
    """
    a, b = _as_numpy(expected), _as_numpy(actual)
    n = len(a["scores"])
    assert len(b["scores"]) == n, f"{what}: {len(b['scores'])} detections, expected {n}"
    unmatched = np.ones(n, dtype=bool)
    for i in np.argsort(-a["scores"], kind="stable"):
        candidates = np.flatnonzero(unmatched & (b["classes"] == a["classes"][i]))
        assert len(candidates), f"{what}: no detection of class {a['classes'][i]} left for {a['boxes'][i]}"
        j = candidates[np.argmax(_iou(a["boxes"][i], b["boxes"][candidates]))]
        unmatched[j] = False
        tolerance = BOX_ATOL_PX + BOX_RTOL * np.abs(a["boxes"][i])
        difference = np.abs(a["boxes"][i] - b["boxes"][j]).max()
        assert np.all(np.abs(a["boxes"][i] - b["boxes"][j]) <= tolerance), (
            f"{what}: box {b['boxes'][j]} differs from {a['boxes'][i]} by {difference:.2g} px"
        )
        assert abs(a["scores"][i] - b["scores"][j]) <= SCORE_ATOL, (
            f"{what}: score {b['scores'][j]} differs from {a['scores'][i]}"
        )
        if "masks" in a and "masks" in b and a["masks"].dtype.kind == "f":  # probabilities
            difference = np.abs(a["masks"][i] - b["masks"][j]).max()
            assert difference <= MASK_PROB_ATOL, f"{what}: mask probabilities differ by {difference}"
        elif "masks" in a and "masks" in b:
            ma, mb = a["masks"][i].astype(bool), b["masks"][j].astype(bool)
            union = np.logical_or(ma, mb).sum()
            iou = np.logical_and(ma, mb).sum() / union if union else 1.0
            assert iou > MASK_MIN_IOU, f"{what}: mask IoU {iou:.4f} <= {MASK_MIN_IOU} for box {a['boxes'][i]}"
    return n
