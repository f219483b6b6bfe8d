"""What the benchmark scripts of this folder share: the description of the machine a run measured,
a process's resident memory from ``/proc/self/status`` with its high-water mark reset between
samples, and markdown tables.

Example::

    >>> reset_peak_memory()
    >>> data = bytearray(64 << 20)
    >>> read_memory_mib("VmHWM") - read_memory_mib("VmRSS") < 1
    True
"""

import contextlib
import importlib.metadata
import os
import platform
import re
from typing import Dict, Iterable, Optional, Sequence


def machine_description(packages: Sequence[str] = ("torch",)) -> Dict[str, object]:
    """What the figures were measured on: CPU model, its cores, the platform and the versions of
    ``packages`` (as installed; one that is not is reported as missing).

    Args:
        packages: distribution names of the Python packages whose versions the figures depend on.
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
