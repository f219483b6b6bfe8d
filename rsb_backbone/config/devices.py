"""The device a detector runs on."""

import torch

__all__ = ["resolve_device"]


def resolve_device(device: str) -> str:
    """Turn "auto" into "cuda" when a GPU is present, else "cpu"; refuse CUDA without a GPU.

    Args:
        device: "auto", "cpu", "cuda" or "cuda:N" (``train.device`` of a LazyConfig, the
            predictors' ``device``, yacs ``MODEL.DEVICE``).

    Returns:
        the device name to use.
    """
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is available; use device='cpu'")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device
