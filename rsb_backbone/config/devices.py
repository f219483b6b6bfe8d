"""The device a detector runs on."""

import torch


def resolve_device(device: str) -> str:
    """The device to use for ``device`` ("auto", "cpu", "cuda" or "cuda:N"): "auto" is "cuda" when a
    GPU is present, else "cpu"; CUDA without a GPU is refused."""
    device = str(device)
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is available; use device='cpu'")
    if not (device == "cpu" or device.startswith("cuda")):
        raise ValueError(f"device={device!r}: expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return device
