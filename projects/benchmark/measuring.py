"""What the benchmark scripts of this folder share: the description of the machine a run measured,
a process's resident memory from ``/proc/self/status`` with its high-water mark reset between
samples, the bytes a model's tensors hold, image sizes of the command line, and markdown tables.

Example::

    >>> reset_peak_memory()
    >>> data = bytearray(64 << 20)
    >>> read_memory_mib("VmHWM") - read_memory_mib("VmRSS") < 1
    True
"""

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import os
import platform
import re
from typing import Dict, Iterable, Optional, Sequence, Tuple


def machine_description(packages: Sequence[str] = ("torch",), device=None) -> Dict[str, object]:
    """What the figures were measured on: CPU model, its cores, the platform, the versions of
    ``packages`` (as installed; one that is not is reported as missing), torch's CPU threads and,
    for a CUDA ``device``, the GPU with its CUDA and cuDNN versions.

    Args:
        packages: distribution names of the Python packages whose versions the figures depend on.
        device: the ``torch.device`` the figures come from; None: the CPU.
    """
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            match = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.M)
            cpu = match.group(1).strip() if match else cpu
    info: Dict[str, object] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    for name in packages:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            info[name] = "missing"
    import torch

    info["torch_threads"] = torch.get_num_threads()
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info


def read_memory_mib(field: str) -> float:
    """One memory figure of this process from ``/proc/self/status``, in MiB.

    Args:
        field: ``VmRSS`` (resident set now) or ``VmHWM`` (its high-water mark).
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def reset_peak_memory() -> None:
    """Reset this process's resident high-water mark (``VmHWM``) to its resident set now, so that
    ``read_memory_mib("VmHWM")`` covers what comes after. A process started by ``subprocess``
    inherits its parent's ``ru_maxrss``; ``VmHWM`` after this reset is its own."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def release_cpu_memory() -> None:
    """Give memory that Python and glibc hold but no longer use back to the system, so that the
    next sample's resident set starts from what is in use."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def cpu_peak_memory_supported() -> bool:
    """Whether this process's resident high-water mark can be read and reset (Linux 4.0+)."""
    try:
        reset_peak_memory()
        read_memory_mib("VmHWM")
    except (OSError, RuntimeError):
        return False
    return True


def tensor_bytes(model) -> int:
    """Bytes held by the parameters and buffers of a ``torch.nn.Module``."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)


def parse_image_size(text: str, aspect: Optional[float] = None) -> Tuple[int, int]:
    """An image size of the command line as (height, width): ``"800x1333"`` -> (800, 1333); a single
    number N is a square N x N, or with ``aspect`` (height / width) the long side of that aspect
    (``"512"`` with 800/1333 -> (307, 512)).

    Raises:
        argparse.ArgumentTypeError: not N or HxW, or a side under 32 pixels.
    """
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"image size {text!r}: expected N or HxW, e.g. 512 or 800x1333")
    if match.group(2):
        height, width = int(match.group(1)), int(match.group(2))
    else:
        width = int(match.group(1))
        height = width if aspect is None else round(width * aspect)
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f"image size {text!r}: both sides must be at least 32 pixels")
    return height, width


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]], right_aligned: Optional[Sequence[bool]] = None) -> str:
    """A markdown table.

    Args:
        headers: column titles.
        rows: one sequence of cells per row (converted with ``str``).
        right_aligned: per column, whether its cells are right-aligned (numbers); default: all
            but the first.
    """
    if right_aligned is None:
        right_aligned = [False] + [True] * (len(headers) - 1)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---:" if r else "---" for r in right_aligned) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
