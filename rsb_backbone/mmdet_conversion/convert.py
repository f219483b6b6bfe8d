"""Converting mmdetection v2.x checkpoints of the four RSB detectors to Detectron2 checkpoints.

Every tensor is accounted for (:func:`convert_state_dict`); the only one dropped on purpose, and
reported, is a ``num_batches_tracked`` counter whose target is a ``FrozenBatchNorm2d`` without one.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import nn

from ..checkpoint.checkpoint_layouts import MMDETECTION_ENTRY, checkpoint_tensors
from ..checkpoint.model_metadata import METADATA_KEY, storable_model_metadata
from ..checkpoint.tensor_files import WeightFileError, load_tensor_file
from ..config import get_config_file
from ..modeling.backbone.timm_resnet import skip_pretrained_weights
from ..utils.file_io import atomic_torch_save
from .key_maps import DETECTORS, TENSOR_TRANSFORMS, map_key

logger = logging.getLogger(__name__)

# The LazyConfig each detector converts to, relative to the repository root: the `_mmdet` configs
# (the cascade needs their three mask heads, RetinaNet their clipping before NMS); every `_mmdet`
# model has its plain config's parameters, so the files load into either.
DEFAULT_CONFIGS: Dict[str, str] = {d: f"configs/COCO/{d}_rsb_r50_fpn_1x_mmdet.py" for d in DETECTORS}

_AUTHOR = "RSB-Detectron2 projects/mmdet_checkpoints/convert_mmdet_checkpoint.py"


class MMDetConversionError(WeightFileError):
    """A checkpoint that cannot be converted; the message names the file and the keys."""


def _key_list(keys, limit: int = 8) -> str:
    """The first ``limit`` of the sorted ``keys``, and how many more there are."""
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


# Modules whose weights identify each detector besides backbone.conv1, most specific first; all
# must be present (faster_rcnn: and no mask head).
_SIGNATURES = {
    "retinanet": ("bbox_head.retina_cls", "bbox_head.retina_reg"),
    "cascade_mask_rcnn": (
        "rpn_head.rpn_cls",
        "roi_head.bbox_head.0.fc_cls",
        "roi_head.mask_head.0.conv_logits",
    ),
    "mask_rcnn": ("rpn_head.rpn_cls", "roi_head.bbox_head.fc_cls", "roi_head.mask_head.conv_logits"),
    "faster_rcnn": ("rpn_head.rpn_cls", "roi_head.bbox_head.fc_cls"),
}


def detect_detector(state_dict: Mapping[str, Any], source: str = "<state_dict>") -> str:
    """Which of :data:`DETECTORS` an mmdetection state dict belongs to, from its heads' keys.

    Args:
        state_dict: mmdetection parameter names to tensors.
        source: the file name, for error messages.

    Raises:
        MMDetConversionError: the keys match none of the four detectors.
    """
    keys = set(state_dict)
    has_mask_head = any(k.startswith("roi_head.mask_head.") for k in keys)
    for detector, signature in _SIGNATURES.items():  # most specific first
        if keys.issuperset(f"{m}.weight" for m in ("backbone.conv1",) + signature):
            if not (detector == "faster_rcnn" and has_mask_head):
                return detector
    if "roi_head.bbox_head.0.fc_cls.weight" in keys and not has_mask_head:
        hint = "a Cascade R-CNN without mask heads, which has no config here"
    else:
        prefixes = sorted({k.split(".")[0] for k in keys})
        hint = f"its top-level modules are {', '.join(prefixes)}"
    raise MMDetConversionError(
        f"{source}: not a checkpoint of one of the supported mmdetection v2 detectors "
        f"({', '.join(DETECTORS)}, ResNet-FPN); {hint}"
    )


@dataclass
class ConversionReport:
    """What a conversion did.

    Attributes:
        source: the input file (or a description of the state dict).
        detector: one of :data:`DETECTORS`.
        num_tensors: tensors written.
        transformed: Detectron2 keys whose tensor was changed, not only renamed -> transform name.
        dropped: mmdetection keys left out on purpose (see the module docstring).
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
            names = ", ".join(sorted(set(self.transformed.values())))
            text += f", {len(self.transformed)} transformed ({names})"
        if self.dropped:
            text += f", {len(self.dropped)} num_batches_tracked counters dropped (frozen BatchNorm)"
        return text


def convert_state_dict(
    mmdet_state_dict: Mapping[str, torch.Tensor],
    detector: str,
    target_state_dict: Mapping[str, torch.Tensor],
    *,
    source: str = "<state_dict>",
    target_name: str = "the target model",
) -> Tuple[Dict[str, torch.Tensor], ConversionReport]:
    """Rename and transform an mmdetection state dict (:mod:`.key_maps`) into exactly the keys and
    shapes of ``target_state_dict``.

    Args:
        mmdet_state_dict: mmdetection's ``state_dict`` entry.
        detector: one of :data:`DETECTORS` (see :func:`detect_detector`).
        target_state_dict: ``model.state_dict()`` of the Detectron2 model to load into.
        source: the file name, for messages.
        target_name: the target (e.g. its config file), for messages.

    Returns:
        (Detectron2 state dict, report).

    Raises:
        MMDetConversionError: naming the keys that fit nowhere, are missing or differ in shape.
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
    transformed, unmatched, no_place, duplicated, mismatched, dropped = {}, [], [], [], [], []
    provided = set()  # target keys some checkpoint tensor maps to (shape checked separately)
    for key, tensor in mmdet_state_dict.items():
        mapped = map_key(detector, key)
        if mapped is None:
            unmatched.append(key)
            continue
        target_key, transform = mapped
        if target_key not in target_state_dict:
            module, _, buffer = target_key.rpartition(".")
            if buffer == "num_batches_tracked" and f"{module}.running_mean" in target_state_dict:
                dropped.append(key)  # a FrozenBatchNorm2d created without the counter
            else:
                no_place.append(f"{key} -> {target_key}")
            continue
        if target_key in provided:
            duplicated.append(target_key)
            continue
        provided.add(target_key)
        if transform is not None:
            tensor = TENSOR_TRANSFORMS[transform](tensor)
            transformed[target_key] = transform
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
    return converted, ConversionReport(source, detector, len(converted), transformed, dropped)


def build_target_model(config_file: str) -> nn.Module:
    """The Detectron2 model of a LazyConfig, on the CPU, without downloading backbone weights."""
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.load(config_file)  # FileNotFoundError naming a missing file
    skip_pretrained_weights(cfg.model)  # the checkpoint provides every weight
    return instantiate(cfg.model).eval()


def convert_mmdet_checkpoint(
    input_path: str, output_path: str, *, detector: str = "auto", config_file: Optional[str] = None
) -> ConversionReport:
    """Convert an mmdetection checkpoint file into a Detectron2 checkpoint for our config
    (``docs/mmdet_checkpoints.md``), with model metadata from ``meta["CLASSES"]`` when present.

    Args:
        input_path: mmdetection ``.pth`` file.
        output_path: Detectron2 checkpoint to write.
        detector: "auto" or one of :data:`DETECTORS`.
        config_file: target LazyConfig; default per detector.

    Returns:
        the :class:`ConversionReport`.

    Raises:
        FileNotFoundError: no such input file.
        WeightFileError: unreadable, truncated, or would need arbitrary unpickling.
        MMDetConversionError: not a checkpoint of one of :data:`DETECTORS`, or it does not fit the config.
    """
    input_path = os.fspath(input_path)
    if detector != "auto" and detector not in DETECTORS:
        raise ValueError(f"detector={detector!r}: expected 'auto' or one of {', '.join(DETECTORS)}")
    loaded = load_tensor_file(input_path)  # tensors-only; mmdetection's "meta" holds plain values
    state_dict = checkpoint_tensors(loaded, input_path, entry=MMDETECTION_ENTRY, error=MMDetConversionError)
    meta = loaded.get("meta") if MMDETECTION_ENTRY in loaded else None
    meta = dict(meta) if isinstance(meta, Mapping) else {}
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
    info.update({k: meta[k] for k in ("mmdet_version", "mmcv_version") if isinstance(meta.get(k), str)})
    classes = meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        info["classes"] = list(classes)
    content = dict(model=converted, __author__=_AUTHOR, matching_heuristics=False, mmdet_conversion=info)
    if info.get("classes"):  # class names for the predictors (see model_metadata)
        from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

        coco = [c for c in COCO_CATEGORIES if c["isthing"]]
        metadata = {"thing_classes": info["classes"]}
        if info["classes"] == [c["name"] for c in coco]:  # mmdetection orders them by id, as Detectron2
            metadata["thing_dataset_id_to_contiguous_id"] = {c["id"]: i for i, c in enumerate(coco)}
        content[METADATA_KEY] = storable_model_metadata(metadata)
    atomic_torch_save(content, os.fspath(output_path))
    logger.info("%s; written to %s", report.summary(), output_path)
    return report
