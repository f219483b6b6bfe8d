"""Paired ratios: how much faster or smaller one model is than another, with the spread of the estimate.

Two models timed in one alternating run (sample i of A, then sample i of B, the order flipped
from pair to pair) share the machine's load pair by pair: a busy second slows both samples of a
pair. The ratio of the two samples of each pair, ``b[i] / a[i]``, therefore cancels most of that
load, and the median of the per-pair ratios with their interquartile range (IQR) says both how
large the difference is and how well the run resolved it. The ratio of the two medians has
neither property: each median can come from a different, differently loaded, moment.

Example::

    >>> stats = paired_ratio_statistics(numerators=[104, 220, 90, 300, 98], denominators=[100, 200, 100, 250, 100])
    >>> round(stats["median"], 3), round(stats["q1"], 3), round(stats["q3"], 3)
    (1.04, 0.98, 1.1)
    >>> format_ratio(stats)
    '1.04 (0.98-1.10)'
"""

import math
import statistics
from typing import Dict, List, Optional, Sequence


def quartiles(values: Sequence[float]) -> List[float]:
    """First quartile, median and third quartile of ``values``, linearly interpolated between the
    sorted values (numpy's default ``linear`` method; the ``inclusive`` method of
    :func:`statistics.quantiles`). One value is its own three quartiles.

    Args:
        values: at least one number.
    """
    if not values:
        raise ValueError("quartiles of no values")
    if len(values) == 1:
        return [float(values[0])] * 3
    return [float(q) for q in statistics.quantiles(values, n=4, method="inclusive")]


def paired_ratio_statistics(
    numerators: Sequence[float], denominators: Sequence[float]
) -> Dict[str, Optional[float]]:
    """Median and interquartile range of the per-pair ratios ``numerators[i] / denominators[i]``.

    Args:
        numerators: one sample per pair of the model in the numerator (e.g. this repository's).
        denominators: the other model's sample of the same pairs, in the same order.

    Returns:
        ``n`` (number of pairs), ``ratios`` (per pair), ``median``, ``q1``, ``q3``, ``iqr``
        (``q3 - q1``), ``min`` and ``max`` of the ratios; the figures are None where no pair has
        two usable (not None, denominator not zero) samples.
    """
    if len(numerators) != len(denominators):
        raise ValueError(
            f"{len(numerators)} numerators for {len(denominators)} denominators: samples must pair up"
        )
    ratios = [
        n / d
        for n, d in zip(numerators, denominators)
        if n is not None and d is not None and d != 0 and math.isfinite(n) and math.isfinite(d)
    ]
    if not ratios:
        return {
            "n": 0,
            "ratios": [],
            "median": None,
            "q1": None,
            "q3": None,
            "iqr": None,
            "min": None,
            "max": None,
        }
    q1, median, q3 = quartiles(ratios)
    return {
        "n": len(ratios),
        "ratios": ratios,
        "median": median,
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "min": min(ratios),
        "max": max(ratios),
    }


def within_tolerance(stats: Dict[str, Optional[float]], tolerance: float = 0.05) -> bool:
    """Whether both quartiles of the ratios lie within ``tolerance`` of their median (e.g. the IQR
    within +-0.05), i.e. whether the run resolved the ratio to that precision.

    Args:
        stats: a :func:`paired_ratio_statistics` result.
        tolerance: largest accepted distance of either quartile from the median.
    """
    if stats["median"] is None:
        return False
    return stats["q3"] - stats["median"] <= tolerance and stats["median"] - stats["q1"] <= tolerance


def format_ratio(stats: Dict[str, Optional[float]], digits: int = 2) -> str:
    """``"median (q1-q3)"`` of a :func:`paired_ratio_statistics` result, or ``"n/a"``.

    Args:
        stats: a :func:`paired_ratio_statistics` result.
        digits: decimals of each number.
    """
    if stats["median"] is None:
        return "n/a"
    return f"{stats['median']:.{digits}f} ({stats['q1']:.{digits}f}-{stats['q3']:.{digits}f})"
