"""Mixed precision for training, evaluation and the predictors: which precisions a device takes,
``torch.autocast`` on CUDA and on the CPU, and detector outputs brought back to float32.

On CUDA, float16 (with a gradient scaler in training) and bfloat16; on the CPU, bfloat16 only
(``torch.autocast("cpu")`` has no float16 kernels for most layers). A CPU without bf16 instructions
(``avx512_bf16``, ``amx_bf16``) runs bfloat16 emulated, slower than float32: a warning says so.
The weights stay float32 throughout; only the computations inside autocast run in lower precision.
"""

import logging
from typing import Any, Optional

import torch
from torch import nn

from detectron2.structures import Boxes, Instances

logger = logging.getLogger(__name__)

PRECISIONS = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_ALIASES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
_CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_warned = set()  # warnings already given in this process: each once, not once per call


def cpu_has_bf16_instructions() -> bool:
    """Whether this CPU computes bfloat16 natively (``avx512_bf16`` or AMX), as PyTorch's own CPU
    capability check reports it; ``/proc/cpuinfo``'s flags where PyTorch does not say."""
    checks = [
        getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    ]
    if all(callable(check) for check in checks):
        return any(check() for check in checks)
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read().split()
    except OSError:
        return False
    return any(flag in flags for flag in _CPU_BF16_FLAGS)


def precision_name(precision: str, *, key: str = "precision") -> str:
    """The canonical name ("float32", "float16", "bfloat16") of ``precision`` (also "fp32", "fp16",
    "bf16"); ``key`` names the config key or option in the error."""
    name = _ALIASES.get(str(precision), str(precision))
    if name not in PRECISIONS:
        raise ValueError(f"{key}={precision!r}: expected one of {', '.join(PRECISIONS)}")
    return name


def resolve_precision(precision: str, device: str, *, key: str = "precision") -> torch.dtype:
    """The dtype for computing in ``precision`` on ``device``; refuses what the device cannot run.

    Args:
        precision: "float32", "float16" or "bfloat16" (also "fp32", "fp16", "bf16").
        device: "cpu", "cuda" or "cuda:N", already resolved.
        key: the config key or option that gave ``precision``, for messages.

    Raises:
        ValueError: an unknown precision, or float16 on the CPU.
    """
    name = precision_name(precision, key=key)
    device_type = torch.device(device).type
    if name == "float16" and device_type != "cuda":
        raise ValueError(
            f"{key}={precision} needs a CUDA device, not {device!r}: on the CPU use {key}=bfloat16"
        )
    if name == "bfloat16" and device_type == "cpu" and not cpu_has_bf16_instructions():
        message = (
            f"{key}={precision} on a CPU without bf16 instructions ({', '.join(_CPU_BF16_FLAGS)}): "
            f"it is emulated there and slower than float32"
        )
        if message not in _warned:
            _warned.add(message)
            logger.warning(message)
    return PRECISIONS[name]


def training_precision(train_cfg, device: Optional[str] = None) -> Optional[torch.dtype]:
    """The dtype of a LazyConfig's mixed precision training (``train.amp``), None when it is off.

    Args:
        train_cfg: ``cfg.train``: ``amp.enabled`` and ``amp.precision`` ("float16" or "bfloat16";
            float16, Detectron2's default, where a saved config has no ``precision``).
        device: the resolved device; ``train_cfg.device`` by default.
    """
    amp = train_cfg.get("amp", None) or {}
    if not amp.get("enabled", False):
        return None
    precision = amp.get("precision", "float16")
    dtype = resolve_precision(precision, device or train_cfg.device, key="train.amp.precision")
    if dtype == torch.float32:
        raise ValueError(
            f"train.amp.precision={precision!r} with train.amp.enabled=True: expected float16 or bfloat16 "
            f"(train.amp.enabled=False trains in float32)"
        )
    return dtype


def autocast(device: str, dtype: torch.dtype):
    """``torch.autocast`` for ``device``'s type in ``dtype``; does nothing for float32."""
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=dtype, enabled=dtype != torch.float32)


def outputs_to_float32(outputs: Any) -> Any:
    """``outputs`` with every floating point tensor in float32: tensors, ``Boxes``, ``Instances``
    fields, and lists, tuples and dicts of them (other values unchanged)."""
    if isinstance(outputs, torch.Tensor):
        return outputs.float() if outputs.is_floating_point() else outputs
    if isinstance(outputs, Boxes):
        return type(outputs)(outputs_to_float32(outputs.tensor))
    if isinstance(outputs, Instances):
        converted = Instances(outputs.image_size)
        for name, value in outputs.get_fields().items():
            converted.set(name, outputs_to_float32(value))
        return converted
    if isinstance(outputs, dict):
        return {k: outputs_to_float32(v) for k, v in outputs.items()}
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(outputs_to_float32(v) for v in outputs)
    return outputs


class AutocastInference(nn.Module):
    """A detector run under autocast, returning float32 outputs: what evaluation loops
    (``inference_on_dataset``, ``DefaultTrainer.test``) take in place of the detector.

    Args:
        model: the detector (or its DistributedDataParallel wrapper).
        device: the model's device.
        dtype: the precision of the computations.
    """

    def __init__(self, model: nn.Module, device: str, dtype: torch.dtype):
        super().__init__()
        self.model = model
        self.device = str(device)
        self.dtype = dtype

    def forward(self, *args, **kwargs):
        with autocast(self.device, self.dtype):
            outputs = self.model(*args, **kwargs)
        return outputs_to_float32(outputs)


def in_precision(model: nn.Module, device: str, dtype: Optional[torch.dtype]) -> nn.Module:
    """``model`` itself for float32 (or None), else :class:`AutocastInference` around it."""
    if dtype is None or dtype == torch.float32:
        return model
    logger.info("Inference in %s under torch.autocast(%r)", dtype, torch.device(device).type)
    return AutocastInference(model, device, dtype)


__all__ = [
    "PRECISIONS",
    "AutocastInference",
    "autocast",
    "cpu_has_bf16_instructions",
    "in_precision",
    "outputs_to_float32",
    "precision_name",
    "resolve_precision",
    "training_precision",
]
