"""projects/benchmark/measuring.py's alternating runs and paired ratios, and the pure helpers of
mmdet_side_by_side.py (no mmdetection needed)."""

import os
import sys
from types import SimpleNamespace

import pytest

from conftest import REPO_ROOT

BENCHMARK_DIR = os.path.join(REPO_ROOT, "projects", "benchmark")
if BENCHMARK_DIR not in sys.path:
    sys.path.insert(0, BENCHMARK_DIR)

import mmdet_side_by_side  # noqa: E402  (lives in projects/benchmark)
from measuring import (
    alternate,
    format_ratio,
    paired_ratio_statistics,
    quartiles,
    within_tolerance,
)  # noqa: E402


def test_ratios_are_taken_pair_by_pair():
    # A load spike doubles both samples of pair 2: the per-pair ratio is unaffected.
    stats = paired_ratio_statistics([105, 210, 104, 106], [100, 200, 100, 100])
    assert stats["n"] == 4
    assert stats["ratios"] == pytest.approx([1.05, 1.05, 1.04, 1.06])
    assert stats["median"] == pytest.approx(1.05)
    assert stats["q1"] == pytest.approx(1.0475)
    assert stats["q3"] == pytest.approx(1.0525)
    assert stats["iqr"] == pytest.approx(0.005)
    assert within_tolerance(stats, 0.05)
    assert format_ratio(stats) == "1.05 (1.05-1.05)"


def test_quartiles_match_numpy_linear_interpolation():
    values = [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]
    numpy = pytest.importorskip("numpy")
    assert quartiles(values) == pytest.approx(list(numpy.percentile(values, [25, 50, 75])))
    assert quartiles([2.0]) == [2.0, 2.0, 2.0]


def test_unusable_pairs_are_left_out_and_mismatched_lengths_refused():
    stats = paired_ratio_statistics([1.0, None, 2.0], [0.0, 1.0, 1.0])
    assert stats["n"] == 1 and stats["median"] == 2.0
    empty = paired_ratio_statistics([], [])
    assert empty["median"] is None and format_ratio(empty) == "n/a" and not within_tolerance(empty)
    with pytest.raises(ValueError):
        paired_ratio_statistics([1.0], [1.0, 2.0])


def test_wide_spread_is_not_resolved():
    stats = paired_ratio_statistics([1.0, 1.3, 0.8, 1.0], [1.0, 1.0, 1.0, 1.0])
    assert not within_tolerance(stats, 0.05)


def test_sizes_default_to_the_recipe_aspect():
    assert mmdet_side_by_side.parse_size("800x1333") == (800, 1333)
    assert mmdet_side_by_side.parse_size("512") == (307, 512)
    assert mmdet_side_by_side.parse_size("1333") == (800, 1333)


def test_group_times_are_exclusive_of_nested_groups():
    def event(name, start, end, thread=1):
        return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end), thread=thread)

    events = [
        event("group:total", 0, 10_000),
        event("group:neck", 0, 4_000),
        event("group:backbone", 500, 3_500),
        event("aten::conv2d", 600, 900),  # not a group: counted in its enclosing group
        event("group:postprocess", 5_000, 6_000),
        event("autograd::engine::evaluate_function: ConvolutionBackward0", 6_000, 8_000),
        event("Optimizer.step#AdamW.step", 8_000, 9_500),
        event("group:backbone", 0, 50_000, thread=2),  # another thread: ignored
    ]
    times = mmdet_side_by_side.group_times(events, "group:total")
    assert times == pytest.approx(
        {"other": 1.5, "neck": 1.0, "backbone": 3.0, "postprocess": 1.0, "backward": 2.0, "optimizer": 1.5}
    )


def test_alternate_flips_the_order_every_round_and_drops_the_warmup():
    calls = []
    functions = {name: (lambda name=name: calls.append(name) or len(calls)) for name in ("a", "b")}
    samples = alternate(functions, rounds=2, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert samples == {"a": [4, 5], "b": [3, 6]}  # sample i of each side from round i


def test_profile_groups_mark_submodules_methods_and_module_lists():
    import torch

    class Head(torch.nn.Module):
        def forward(self, x):
            return x * 2

        def postprocess(self, x):
            return x.sum()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Linear(4, 4)
            self.heads = torch.nn.ModuleList([Head(), Head()])

        def forward(self, x):
            x = self.backbone(x)
            return sum(head.postprocess(head.forward(x)) for head in self.heads)  # forward called directly

    model = Model()
    groups = {"backbone": "backbone", "head": "heads", "postprocess": "heads.postprocess", "neck": "neck"}
    targets = [mmdet_side_by_side.group_targets(model, path) for path in groups.values()]
    assert targets[0] == [(model.backbone, "forward")]
    assert targets[1] == [(head, "forward") for head in model.heads]
    assert targets[2] == [(head, "postprocess") for head in model.heads] and targets[3] == []
    profile = {}
    with mmdet_side_by_side.marked_groups(model, groups), torch.profiler.profile() as profile["run"]:
        with torch.profiler.record_function("group:total"):
            model(torch.ones(2, 4))
    assert "forward" not in vars(model.heads[0])  # the patches are undone
    times = mmdet_side_by_side.group_times(profile["run"].events(), "group:total")
    assert set(times) == {"backbone", "head", "postprocess", "other"}
