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


def test_alternate_flips_the_order_every_round_and_drops_the_warmup():
    calls = []
    functions = {name: (lambda name=name: calls.append(name) or len(calls)) for name in ("a", "b")}
    samples = alternate(functions, rounds=2, warmup=1)
    assert calls == ["a", "b", "b", "a", "a", "b"]
    assert samples == {"a": [4, 5], "b": [3, 6]}  # sample i of each side from round i


def test_profile_groups_mark_submodules_methods_and_module_lists(monkeypatch):
    import torch

    clock = [0.0]  # seconds: the models below spend a set time in each call
    monkeypatch.setattr(mmdet_side_by_side, "perf_counter", lambda: clock[0])

    def spend(ms):
        clock[0] += ms / 1000

    class Head(torch.nn.Module):
        def forward(self, x):
            spend(2)
            return self.postprocess(x * 2)  # a group called inside another

        def postprocess(self, x):
            spend(1)
            return x.sum()

    class Backbone(torch.nn.Linear):
        def forward(self, x):
            spend(3)
            return super().forward(x)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = Backbone(4, 4)
            self.heads = torch.nn.ModuleList([Head(), Head()])

        def forward(self, x):
            spend(0.5)
            x = self.backbone(x)
            x.register_hook(lambda grad: spend(4))  # runs in the backward pass
            return sum(head.forward(x) for head in self.heads)  # forward called directly

    model = Model()
    groups = {"backbone": "backbone", "head": "heads", "postprocess": "heads.postprocess", "neck": "neck"}
    targets = [mmdet_side_by_side.group_targets(model, path) for path in groups.values()]
    assert targets[0] == [(model.backbone, "forward")]
    assert targets[1] == [(head, "forward") for head in model.heads]
    assert targets[2] == [(head, "postprocess") for head in model.heads] and targets[3] == []
    assert mmdet_side_by_side.group_targets(model, "torch:Tensor.backward") == [(torch.Tensor, "backward")]
    assert mmdet_side_by_side.group_targets(model, "os.path:join") == [(os.path, "join")]
    optimizer = torch.optim.AdamW(model.parameters())
    optimizer.register_step_pre_hook(lambda *args: spend(1.5))
    backward, step = torch.Tensor.backward, torch.optim.AdamW.step

    def train_step():
        optimizer.zero_grad()
        model(torch.ones(2, 4)).backward()
        optimizer.step()

    times, groups = {}, {**groups, **mmdet_side_by_side.TRAIN_GROUPS}
    with mmdet_side_by_side.marked_groups(model, groups, times) as mark:
        mark("other", train_step)()
    # Exclusive of the groups inside: the heads' 2 x 2 ms without their postprocess; "other" the model's own.
    expected = dict(other=0.5, backbone=3.0, head=4.0, postprocess=2.0, backward=4.0, optimizer=1.5)
    assert times == pytest.approx(expected)
    assert "forward" not in vars(model.heads[0])  # the patches are undone
    assert torch.Tensor.backward is backward and torch.optim.AdamW.step is step
