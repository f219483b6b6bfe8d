"""A short CPU training on the generated shapes learns: box AP far above chance.

Chance is about 0 AP: random boxes almost never overlap a shape by IoU >= 0.5 with the right
class. The run is the quick CPU demo config, unchanged (README "Run it" gives its figure).
"""

import pytest

from train_net_runner import read_metrics

# The README's run reached box AP 40.3 at iteration 200; the threshold leaves room for run-to-run
# variation across machines.
MIN_BOX_AP = 25.0


@pytest.mark.slow
def test_quick_demo_learns_the_shapes(quick_demo):
    """The session's run of the README's quick demo command (conftest's ``quick_demo``)."""
    evaluations = [r for r in read_metrics(quick_demo.output_dir) if "bbox/AP" in r]
    assert evaluations, "no evaluation was recorded"
    assert evaluations[-1]["iteration"] >= 199  # the evaluation after the last iteration
    box_ap = evaluations[-1]["bbox/AP"]
    print(f"box AP after 200 iterations: {box_ap:.1f}")
    assert box_ap > MIN_BOX_AP, box_ap
