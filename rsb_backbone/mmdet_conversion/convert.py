"""Converting mmdetection v2.x checkpoints of the four RSB detectors to Detectron2 checkpoints.

Every tensor is accounted for (:func:`convert_state_dict`); the only one dropped on purpose, and
reported, is a ``num_batches_tracked`` counter whose target is a ``FrozenBatchNorm2d`` without one.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..engine.atomic_checkpointer import atomic_torch_save
from ..model_metadata import METADATA_KEY, storable_model_metadata
from ..model_zoo import get_config_file
from ..timm_resnet import skip_pretrained_weights
from .checkpoints import MMDetConversionError, _key_list, detect_detector, load_mmdet_checkpoint
from .key_maps import DETECTORS, TENSOR_TRANSFORMS, map_key

logger = logging.getLogger(__name__)

# The LazyConfig each detector converts to, relative to the repository root: the `_mmdet` configs,
# which describe mmdetection-trained models (the cascade needs their three mask heads, RetinaNet
# their clipping before NMS; Faster and Mask R-CNN differ from the plain configs only in
# training). Every `_mmdet` model has its plain config's parameters, so the files load into either.
DEFAULT_CONFIGS: Dict[str, str] = {
    detector: f"configs/COCO/{detector}_rsb_r50_fpn_1x_mmdet.py"
    for detector in ("faster_rcnn", "mask_rcnn", "cascade_mask_rcnn", "retinanet")
}

_AUTHOR = "RSB-Detectron2 projects/mmdet_checkpoints/convert_mmdet_checkpoint.py"
_NUM_BATCHES_TRACKED = ".num_batches_tracked"


@dataclass
class ConversionReport:
    """What a conversion did.

    Attributes:
        source: the input file (or a description of the state dict).
        detector: one of :data:`DETECTORS`.
        num_tensors: tensors written.
        transformed: Detectron2 keys whose tensor was changed, not only renamed, with the
            transform's name.
        dropped: mmdetection keys left out on purpose (``num_batches_tracked`` of BatchNorm layers
            that are ``FrozenBatchNorm2d`` without that buffer in the target).
        config: the LazyConfig of the target model, when one was used.
    """

    source: str
    detector: str
    num_tensors: int
    transformed: Dict[str, str] = field(default_factory=dict)
    dropped: List[str] = field(default_factory=list)
    config: Optional[str] = None

    def summary(self) -> str:
        text = f"{self.source}: mmdetection {self.detector}, {self.num_tensors} tensors converted"
        if self.transformed:
            text += (
                f", {len(self.transformed)} transformed ({', '.join(sorted(set(self.transformed.values())))})"
            )
        if self.dropped:
            text += (
                f", {len(self.dropped)} num_batches_tracked counters dropped (frozen BatchNorm without one)"
            )
        return text


def convert_state_dict(
    mmdet_state_dict: Mapping[str, torch.Tensor],
    detector: str,
    target_state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "<state_dict>",
    target_name: str = "the target model",
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Rename and transform an mmdetection state dict into ``target_state_dict``'s keys: each key
    must match a rule of ``detector`` (:mod:`.key_maps`) whose target is in ``target_state_dict``,
    every target key must be produced once, and shapes must agree.

    Args:
        mmdet_state_dict: mmdetection's ``state_dict`` entry.
        detector: one of :data:`DETECTORS` (see :func:`detect_detector`).
        target_state_dict: ``model.state_dict()`` of the Detectron2 model to load into (only
            keys, shapes and dtypes are read).
        source: the file name, for messages.
        target_name: the target (e.g. its config file), for messages.

    Returns:
        (Detectron2 state dict with exactly the keys and shapes of ``target_state_dict``, report).

    Raises:
        MMDetConversionError: listing keys no rule matches, keys with no place in the target,
            target keys nothing provides, and shape mismatches.
    """
    if detector not in DETECTORS:
        raise ValueError(f"detector={detector!r}: expected one of {', '.join(DETECTORS)}")
    if detector == "cascade_mask_rcnn" and "roi_heads.mask_head.mask_fcn1.weight" in target_state_dict:
        raise MMDetConversionError(
            f"{source}: mmdetection's Cascade Mask R-CNN has three mask heads (one per stage, "
            f"averaged at test time) but {target_name} has one; convert for "
            f"{DEFAULT_CONFIGS['cascade_mask_rcnn']} (MMDetCascadeROIHeads), which keeps all three"
        )
    converted: Dict[str, torch.Tensor] = {}
    report = ConversionReport(source=source, detector=detector, num_tensors=0)
    unmatched, no_place, duplicated, mismatched = [], [], [], []
    provided = set()  # target keys some checkpoint tensor maps to (shape checked separately)
    for key, tensor in mmdet_state_dict.items():
        mapped = map_key(detector, key)
        if mapped is None:
            unmatched.append(key)
            continue
        target_key, transform = mapped
        if target_key not in target_state_dict:
            module = target_key[: -len(_NUM_BATCHES_TRACKED)]
            if target_key.endswith(_NUM_BATCHES_TRACKED) and f"{module}.running_mean" in target_state_dict:
                report.dropped.append(key)  # a FrozenBatchNorm2d created without the counter
            else:
                no_place.append(f"{key} -> {target_key}")
            continue
        if target_key in provided:
            duplicated.append(target_key)
            continue
        provided.add(target_key)
        if transform is not None:
            tensor = TENSOR_TRANSFORMS[transform](tensor)
            report.transformed[target_key] = transform
        expected = target_state_dict[target_key]
        if tuple(tensor.shape) != tuple(expected.shape):
            mismatched.append(f"{key} {tuple(tensor.shape)} -> {target_key} {tuple(expected.shape)}")
            continue
        converted[target_key] = tensor.to(dtype=expected.dtype) if tensor.is_floating_point() else tensor
    missing = [k for k in target_state_dict if k not in provided]
    problems = [
        f"{len(keys)} {what}: {_key_list(keys, 4 if keys is mismatched else 8)}"
        for keys, what in (
            (unmatched, f"keys match no {detector} rule"),
            (no_place, f"keys have no place in {target_name}"),
            (duplicated, "target keys are produced twice"),
            (mismatched, "shapes differ"),
            (missing, f"keys of {target_name} are not in the checkpoint"),
        )
        if keys
    ]
    if problems:
        raise MMDetConversionError(
            f"{source}: cannot convert this mmdetection {detector} checkpoint to {target_name}: "
            + "; ".join(problems)
        )
    report.num_tensors = len(converted)
    return converted, report


def build_target_model(config_file: str) -> nn.Module:
    """The Detectron2 model of a LazyConfig, on the CPU, without downloading backbone weights."""
    from detectron2.config import LazyConfig, instantiate

    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file {config_file!r} does not exist")
    cfg = LazyConfig.load(config_file)
    skip_pretrained_weights(cfg.model)  # the checkpoint provides every weight
    return instantiate(cfg.model).eval()


def _plain_meta(meta: Mapping) -> Dict[str, object]:
    info: Dict[str, object] = {}
    for name in ("mmdet_version", "mmcv_version"):
        if isinstance(meta.get(name), str):
            info[name] = meta[name]
    classes = meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        info["classes"] = list(classes)
    return info


def _model_metadata(classes) -> Optional[Dict[str, object]]:
    """Model metadata from mmdetection's class names; COCO's category ids when they are COCO's 80.

    mmdetection orders its COCO classes by category id, as Detectron2 does, so index i of its
    ``CLASSES`` is Detectron2's contiguous id i.
    """
    if not classes:
        return None
    from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

    coco = [c for c in COCO_CATEGORIES if c["isthing"]]
    metadata: Dict[str, object] = {"thing_classes": list(classes)}
    if list(classes) == [c["name"] for c in coco]:
        metadata["thing_dataset_id_to_contiguous_id"] = {c["id"]: i for i, c in enumerate(coco)}
    return storable_model_metadata(metadata)


def convert_mmdet_checkpoint(
    input_path: str,
    output_path: str,
    *,
    detector: str = "auto",
    config_file: Optional[str] = None,
) -> ConversionReport:
    """Convert an mmdetection checkpoint file into a Detectron2 checkpoint for our config.

    Reads ``input_path`` tensors-only, detects the detector (or checks ``detector``), converts for
    the model of ``config_file``, loads the result into it with ``strict=True`` and writes
    ``{"model", "__author__", "mmdet_conversion", "metadata"}`` atomically; ``metadata`` (left out
    without class names) holds ``meta["CLASSES"]``, with COCO's category ids for COCO's 80 classes.

    Args:
        input_path: mmdetection ``.pth`` file.
        output_path: Detectron2 checkpoint to write.
        detector: "auto" or one of :data:`DETECTORS`.
        config_file: target LazyConfig; default per detector.

    Returns:
        the :class:`ConversionReport`.
    """
    input_path = os.fspath(input_path)
    if detector != "auto" and detector not in DETECTORS:
        raise ValueError(f"detector={detector!r}: expected 'auto' or one of {', '.join(DETECTORS)}")
    state_dict, meta = load_mmdet_checkpoint(input_path)
    found = detect_detector(state_dict, input_path)
    if detector not in ("auto", found):
        raise MMDetConversionError(
            f"{input_path}: --detector {detector} given, but the checkpoint holds a {found}"
        )
    # DEFAULT_CONFIGS names them as in the repository; the model zoo finds them installed too.
    default_config = os.path.relpath(DEFAULT_CONFIGS[found], "configs")
    config_file = os.fspath(config_file or get_config_file(default_config))
    model = build_target_model(config_file)
    converted, report = convert_state_dict(
        state_dict, found, model.state_dict(), source=input_path, target_name=config_file
    )
    model.load_state_dict(converted, strict=True)  # the final word on keys and shapes
    report.config = config_file
    info = {"source": os.path.basename(input_path), "detector": found, "config": config_file}
    info.update(_plain_meta(meta))
    content = {"model": converted, "__author__": _AUTHOR, "matching_heuristics": False, "mmdet_conversion": info}
    metadata = _model_metadata(info.get("classes"))
    if metadata:
        content[METADATA_KEY] = metadata  # class names for the predictors (see model_metadata)
    atomic_torch_save(content, os.fspath(output_path))
    logger.info("%s; written to %s", report.summary(), output_path)
    return report
