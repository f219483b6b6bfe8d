"""What the benchmark scripts of this folder share: alternating runs and the paired ratios of their
samples, peak memory, the machine's description, image sizes, FLOP counts, tables, options, output.

Two models timed in one alternating run (sample i of A, then sample i of B, the order flipped every
round) share the machine's load pair by pair, so the per-pair ratios cancel most of it; their median
and interquartile range (IQR) say how large the difference is and how well the run resolved it
(``format_ratio``: ``"1.04 (0.98-1.10)"``), which the ratio of two medians from other moments cannot.
"""

import argparse
import contextlib
import ctypes
import gc
import importlib.metadata
import json
import math
import os
import platform
import re
import statistics
import time
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

MIB = 2**20


def alternate(
    functions: Dict[str, Callable], *, rounds: int, warmup: int = 0, on_round: Optional[Callable] = None
) -> Dict[str, List]:
    """Call each of ``functions`` (name -> measurement, e.g. :func:`timed_ms`) once per round, the
    order flipped every round (A B, B A, ...); ``on_round(index, results)`` after each. Returns name
    -> the results of the ``rounds`` kept rounds (sample i of each from round i), ``warmup`` dropped."""
    names, samples = list(functions), {name: [] for name in functions}
    for index in range(warmup + rounds):
        results = {name: functions[name]() for name in (names if index % 2 == 0 else names[::-1])}
        for name in names if index >= warmup else ():
            samples[name].append(results[name])
        if on_round is not None:
            on_round(index, results)
    return samples


def timed_ms(function: Callable, synchronize: Callable = lambda: None) -> Callable[[], float]:
    """A measurement of ``function``: its wall time in ms after a garbage collection, ``synchronize``
    (waiting for a device's queued work) called before and after it."""

    def measure() -> float:
        gc.collect()
        synchronize()
        start = time.perf_counter()
        function()
        synchronize()
        return 1000 * (time.perf_counter() - start)

    return measure


def quartiles(values: Sequence[float]) -> List[float]:
    """First quartile, median and third quartile, linearly interpolated between the sorted values
    (numpy's default; :func:`statistics.quantiles`' ``inclusive``). One value is its own three."""
    if not values:
        raise ValueError("quartiles of no values")
    if len(values) == 1:
        return [float(values[0])] * 3
    return [float(q) for q in statistics.quantiles(values, n=4, method="inclusive")]


def paired_ratio_statistics(numerators: Sequence[float], denominators: Sequence[float]) -> Dict:
    """Median and interquartile range of the per-pair ratios ``numerators[i] / denominators[i]``:
    ``n`` (usable pairs), ``ratios``, ``median``, ``q1``, ``q3``, ``iqr``, ``min``, ``max``, the figures
    None where no pair has two usable samples (not None, finite, denominator not 0).

    Args:
        numerators: one sample per pair of the model in the numerator (e.g. this repository's).
        denominators: the other model's sample of the same pairs, in the same order.
    """
    if len(numerators) != len(denominators):
        raise ValueError(f"{len(numerators)} numerators for {len(denominators)} denominators: must pair up")
    pairs = [(n, d) for n, d in zip(numerators, denominators) if n is not None and d is not None]
    ratios = [n / d for n, d in pairs if d != 0 and math.isfinite(n) and math.isfinite(d)]
    if not ratios:
        return {"n": 0, "ratios": [], **dict.fromkeys(("median", "q1", "q3", "iqr", "min", "max"))}
    q1, median, q3 = quartiles(ratios)
    stats = dict(n=len(ratios), ratios=ratios, median=median, q1=q1, q3=q3, iqr=q3 - q1)
    return {**stats, "min": min(ratios), "max": max(ratios)}


def within_tolerance(stats: Dict, tolerance: float = 0.05) -> bool:
    """Whether both quartiles of a :func:`paired_ratio_statistics` result lie within ``tolerance``
    of its median, i.e. whether the run resolved the ratio to that precision."""
    median = stats["median"]
    return median is not None and stats["q3"] - median <= tolerance and median - stats["q1"] <= tolerance


def format_ratio(stats: Dict, digits: int = 2) -> str:
    """``"median (q1-q3)"`` of a :func:`paired_ratio_statistics` result, or ``"n/a"``."""
    if stats["median"] is None:
        return "n/a"
    return f"{stats['median']:.{digits}f} ({stats['q1']:.{digits}f}-{stats['q3']:.{digits}f})"


def read_memory_mib(field: str) -> float:
    """``VmRSS`` (resident set now) or ``VmHWM`` (its high-water mark) of this process, in MiB."""
    match = re.search(rf"^{field}:\s*(\d+)", Path("/proc/self/status").read_text(), re.M)
    if not match:
        raise RuntimeError(f"/proc/self/status has no {field}")
    return int(match.group(1)) / 1024


def reset_peak_memory() -> None:
    """Reset this process's ``VmHWM`` to its resident set now (a process started by ``subprocess``
    inherits its parent's ``ru_maxrss``; ``VmHWM`` after this reset is its own)."""
    Path("/proc/self/clear_refs").write_text("5")


def cpu_peak_memory_supported() -> bool:
    """Whether this process's resident high-water mark can be read and reset (Linux 4.0+)."""
    try:
        reset_peak_memory()
        read_memory_mib("VmHWM")
    except (OSError, RuntimeError):
        return False
    return True


def peak_growth_mib(function: Callable) -> float:
    """How far this process's resident set rises while ``function`` runs, in MiB, above its level
    before: memory that Python and glibc hold unused given back first (``malloc_trim``)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    reset_peak_memory()
    before = read_memory_mib("VmRSS")
    function()
    return read_memory_mib("VmHWM") - before


def tensor_bytes(model) -> int:
    """Bytes held by the parameters and buffers of a ``torch.nn.Module``."""
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


def machine_description(packages: Sequence[str] = ("torch",), device=None) -> Dict[str, object]:
    """CPU model, cores, platform, the installed versions of ``packages`` ("missing" for one that
    is not), torch's CPU threads and, for a CUDA ``device`` (a ``torch.device``), the GPU."""
    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        match = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = match.group(1).strip() if match else cpu
    info = dict(
        cpu=cpu, cpu_count=os.cpu_count(), platform=platform.platform(), python=platform.python_version()
    )
    info.update(dict.fromkeys(packages, "missing"))
    for name in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[name] = importlib.metadata.version(name)
    import torch

    info["torch_threads"] = torch.get_num_threads()
    if device is not None and device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return info


def parse_image_size(text: str, aspect: Optional[float] = None) -> Tuple[int, int]:
    """An image size of the command line as (height, width): ``"800x1333"`` -> (800, 1333); a single
    number N is a square N x N, or with ``aspect`` (height / width) the long side of that aspect
    (``"512"`` with 800/1333 -> (307, 512)). Raises argparse.ArgumentTypeError for anything but N or
    HxW, or a side under 32 pixels."""
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"image size {text!r}: expected N or HxW, e.g. 512 or 800x1333")
    width = int(match.group(2) or match.group(1))
    height = int(match.group(1)) if match.group(2) or aspect is None else round(width * aspect)
    if min(height, width) < 32:
        raise argparse.ArgumentTypeError(f"image size {text!r}: both sides must be at least 32 pixels")
    return height, width


def read_image(path: str, height: int, width: int):
    """The image file at ``path`` resized to ``height`` x ``width``: (H, W, 3) uint8 BGR (OpenCV)."""
    import cv2

    image = cv2.imread(path)
    if image is None:
        raise ValueError(f"--image {path}: not a readable image file")
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        if not re.fullmatch(r"-?\d+", text.strip()) or int(text) < minimum:
            raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number of at least {minimum}")
        return int(text)

    return parse


def script_parser(description: str, *, threads: bool = True) -> argparse.ArgumentParser:
    """An argument parser showing ``description`` (a script's docstring) as written, with the options
    every script has: ``--seed``, ``--json``, ``--no-check`` and, with ``threads``, ``--threads``."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and generated inputs")
    parser.add_argument("--json", metavar="OUT", help="also write the report, every sample included, to OUT")
    parser.add_argument("--no-check", dest="check", action="store_false", help="exit 0 whatever the figures")
    if threads:
        parser.add_argument("--threads", type=at_least(1), help="torch CPU threads (default: torch's)")
    return parser


def add_model_options(parser: argparse.ArgumentParser, detectors: Sequence[str]) -> None:
    """``--detectors`` (with random weights), ``--trained NAME CONFIG CHECKPOINT`` and ``--image``."""
    add = parser.add_argument
    # fmt: off
    add("--detectors", nargs="*", choices=list(detectors), default=list(detectors), metavar="NAME",
        help=f"detectors with random weights (default: all of {', '.join(detectors)}; none: --trained only)")
    add("--trained", nargs=3, action="append", default=[], metavar=("NAME", "CONFIG", "CHECKPOINT"),
        help="also measure a trained model (a train_net.py run's config.yaml and checkpoint) as rows NAME")
    add("--image", metavar="FILE", help="measure on this image, resized, instead of random pixels")
    # fmt: on


def models_to_measure(parser: argparse.ArgumentParser, args) -> List[Tuple[str, Optional[Tuple[str, str]]]]:
    """(name, None) for each of ``--detectors``, (name, (config, checkpoint)) for each ``--trained``;
    a usage error when there is none or a file is missing."""
    if not args.detectors and not args.trained:
        parser.error("nothing to measure: name --detectors or give --trained")
    for path in [args.image] * bool(args.image) + [p for _, *paths in args.trained for p in paths]:
        if not os.path.isfile(path):
            parser.error(f"{path}: no such file")
    return [(detector, None) for detector in args.detectors] + [(n, (c, w)) for n, c, w in args.trained]


def count_flops(make_analysis: Callable, logger=None, what: str = "the model") -> Dict:
    """fvcore's count (one multiply-add = one FLOP) of the ``FlopCountAnalysis`` that ``make_analysis``
    builds under ``torch.no_grad``: ``{"gflops", "uncounted_ops": {op: count}}``, or where the tracing
    fails ``{"gflops": None, "error"}`` and a warning naming ``what`` to ``logger``."""
    import torch

    try:
        with torch.no_grad():
            analysis = make_analysis().unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            return {"gflops": analysis.total() / 1e9, "uncounted_ops": dict(analysis.unsupported_ops())}
    except Exception as error:  # noqa: BLE001 - a tracing failure is reported, not fatal
        if logger is not None:
            logger.warning("fvcore could not count the FLOPs of %s: %s", what, error)
        return {"gflops": None, "error": f"{type(error).__name__}: {error}"}


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence], align: Optional[str] = None) -> str:
    """A markdown table, cells through ``str``; ``align``: ``l`` or ``r`` per column (default ``lr..r``)."""
    align = align or "l" + "r" * (len(headers) - 1)
    lines = ["| " + " | ".join(map(str, row)) + " |" for row in [headers, *rows]]
    lines.insert(1, "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
    return "\n".join(lines)


def figure_table(rows: Iterable[Sequence], columns: Sequence[str], ratio_title: str, tolerance=0.05) -> str:
    """The markdown table of two models' figures, and a note on unresolved ratios. ``rows``: (detector,
    figure, value, the other model's value, ratio), the ratio a :func:`paired_ratio_statistics`
    result (median (IQR), ``*`` where not resolved to ``tolerance``, and its pairs), a number or None;
    ``columns``: titles of the two value columns."""
    body = []
    for detector, figure, value, other, ratio in rows:
        if isinstance(ratio, dict):
            cells = [format_ratio(ratio) + ("" if within_tolerance(ratio, tolerance) else " *"), ratio["n"]]
        else:
            cells = ["n/a" if ratio is None else f"{ratio:.3f}", "-"]
        values = ["n/a" if v is None else f"{v:,.1f}" for v in (value, other)]
        body.append([detector, figure, *values, *cells])
    table = markdown_table(["detector", "figure", *columns, ratio_title, "pairs"], body, align="llrrlr")
    note = f"a quartile of the ratios lies more than {tolerance} from their median: not resolved to that"
    return f"{table}\n\n\\* {note} precision by this run."


def measure_each(names: Sequence, measure: Callable, report: Dict, json_path: Optional[str], logger) -> Dict:
    """``report["results"]`` += ``measure(name)`` for each name, each record with its ``seconds``
    and logged; ``report`` written to ``json_path`` (if given) after each. Returns ``report``."""
    for name in names:
        start = time.perf_counter()
        label = name[0] if isinstance(name, tuple) else name
        logger.info("Measuring %s (load %.2f)", label, os.getloadavg()[0])
        record = measure(name)
        record["seconds"] = round(time.perf_counter() - start, 1)
        logger.info("%s done in %.0f s", record.get("detector", name), record["seconds"])
        report["results"].append(record)
        write_json(json_path, report)
    return report


def write_json(path: Optional[str], report: Dict) -> None:
    """Write ``report`` to ``path`` (its folder created), if a path is given."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(report, indent=1))


def exit_status(failures: List[str], *, check: bool, logger) -> int:
    """Log each line of a script's ``failed_checks`` and return its exit status: 1 when ``check``
    (no ``--no-check``) and a figure failed (lines logged as errors), else 0 (as warnings)."""
    log, message = (logger.error, "FAILED %s") if check else (logger.warning, "not checked (--no-check): %s")
    for line in failures:
        log(message, line)
    return 1 if check and failures else 0
