"""The mmdetection comparison scripts fail on figures outside the thresholds their docs state.

Each script's ``failed_checks`` is called on hand-built reports (the structure it writes to its
JSON), one within every threshold and one with a figure outside, and ``main`` is run with the
measuring function replaced, so that neither mmdetection nor mmcv is needed.
"""

import copy
import logging
import os
import sys

import pytest
import torch

from conftest import REPO_ROOT

PARITY_DIR = os.path.join(REPO_ROOT, "projects", "mmdet_checkpoints")
BENCHMARK_DIR = os.path.join(REPO_ROOT, "projects", "benchmark")
for _folder in (PARITY_DIR, BENCHMARK_DIR):
    if _folder not in sys.path:
        sys.path.insert(0, _folder)

import mmdet_data_parity  # noqa: E402  (lives in projects/mmdet_checkpoints)
import mmdet_parity  # noqa: E402
import mmdet_side_by_side  # noqa: E402  (lives in projects/benchmark)
import mmdet_train_parity  # noqa: E402
import mmdet_trajectory_parity  # noqa: E402


# ---- hand-built reports (figures of the documented runs) ---------------------------------------
def parity_image(**changes):
    """One image's figures of ``mmdet_parity.compare`` plus the FPN features, all within threshold."""
    stats = {
        "mmdet": 100, "detectron2": 100, "matched": 100, "max_box_diff_px": 6.103515625e-05,
        "max_score_diff": 1.1920928955078125e-07, "image": "640x480 -> 1067x800",
        "max_feature_diff": 0.0, "max_feature_abs": 5.4,
    }
    stats.update(changes)
    return stats


def parity_report():
    mask_figures = {"mask_pixels_differing": 0, "mask_pixels_total": 104098, "max_mask_pixels_differing": 0, "min_mask_iou": 1.0}
    return {
        "mmdet": "2.28.2",
        "results": {
            "faster_rcnn": {"images": [parity_image(), parity_image()]},
            "mask_rcnn": {"images": [parity_image(**mask_figures), parity_image(**mask_figures)]},
            # the documented NMS tie: one RetinaNet detection unmatched
            "retinanet": {"images": [parity_image(), parity_image(matched=99, max_score_diff=0.0)]},
        },
    }


def train_report():
    return {
        "results": {
            "retinanet": {
                "losses": {
                    "loss_cls": {"mmdet": 10.846, "detectron2": 10.846, "relative_difference": 1.5e-07},
                    "loss_box_reg": {"mmdet": 0.885268, "detectron2": 0.885268, "relative_difference": 6.7e-08},
                },
                "gradients": {
                    "trunk": {"cosine": 1.0, "relative_difference": 9.5e-08, "tensors": 126},
                    "retinanet_head": {"cosine": 0.99999999999999, "relative_difference": 9.8e-08, "tensors": 20},
                },
            }
        }
    }


def data_report():
    """The ``mmdet`` pipeline's figures of the documented run; the other pipelines are not checked."""
    mmdet_pipeline = {
        "batch shapes equal": True, "images with other resized size": 0, "max batch diff (gray levels)": 1.39e-05,
        "mean batch diff (gray levels)": 1.1e-06, "max batch diff (normalised)": 2.384185791015625e-07,
        "8-bit pixels differing / total": [0, 11230632], "max box diff (px)": 0.0, "boxes bit-identical": True,
        "classes equal": True, "instances mmdet / detectron2": [72, 72],
        "full-mask pixels differing / union": [0, 3066522], "mask-target pixels differing / total": [0, 282240],
    }
    plain = dict(mmdet_pipeline, **{"images with other resized size": 2, "max box diff (px)": 1.0, "boxes bit-identical": False})
    return {
        "summary": {"plain": plain, "mmdet": mmdet_pipeline},
        "results": {
            "plain": {"007.jpg flip=False": {"skipped": "an image of the pair is not in both training sets"}},
            "mmdet": {"001.jpg+002.jpg flip=False": {"images": []}, "007.jpg flip=False": {"images": []}},
        },
    }


def trajectory_result(parameter_difference, control_difference=None):
    """One detector's record of ``mmdet_trajectory_parity.compare`` (RetinaNet's documented figures)."""
    result = {
        "losses": {
            "loss_cls": {"relative_difference": [1.8e-07, 2.0e-07] + [1.4e-03] * 28, "max_relative_difference": 1.4e-03},
            "loss_box_reg": {"relative_difference": [6.5e-08, 9.0e-08] + [1.1e-02] * 28, "max_relative_difference": 1.1e-02},
        },
        "learning_rate": {"max_relative_difference_per_step": [0.0] * 29 + [7.940933880509059e-16]},
        "weight_decay": {"parameters_with_other_weight_decay": []},
        "parameters": {
            "per_group": {
                "trunk": {"tensors": 159, "trained": 126, "max_relative_difference": 1.6e-03,
                          "min_relative_change_from_start_of_trained": 3.9e-04, "over_tolerance": []},
                "retinanet_head": {"tensors": 20, "trained": 20, "max_relative_difference": parameter_difference,
                                   "min_relative_change_from_start_of_trained": 1.3e-04, "over_tolerance": []},
            },
            "max_relative_difference": parameter_difference,
        },
    }
    if control_difference is not None:
        result["float32_rounding_control"] = {
            "losses": {}, "parameters": {"max_relative_difference": control_difference, "over_tolerance": []}
        }
    return result


def side_by_side_report(**changes):
    outputs = {
        "mmdet": 100, "detectron2": 100, "matched": 100, "max_box_diff_px": 0.0001220703125,
        "max_score_diff": 4.172325134277344e-07, "mask_pixels_differing": 0, "mask_pixels_total": 296684,
    }
    return {
        "results": [
            {"detector": "mask_rcnn", "outputs": {"800x1333": outputs, "307x512": dict(outputs, **changes)}},
            {"detector": "retinanet", "outputs": {"800x1333": {k: outputs[k] for k in list(outputs)[:5]}}},
        ]
    }


# ---- failed_checks --------------------------------------------------------------------------------
def test_inference_parity_fails_on_a_score_and_an_unmatched_detection_but_allows_the_nms_tie():
    assert mmdet_parity.failed_checks(parity_report()) == []

    report = parity_report()
    report["results"]["mask_rcnn"]["images"][1]["max_score_diff"] = 5e-07
    report["results"]["faster_rcnn"]["images"][0]["matched"] = 99  # RetinaNet's allowance is its own
    assert mmdet_parity.failed_checks(report) == [
        "faster_rcnn (2 images): unmatched detections = 1, outside the threshold <= 0",
        "mask_rcnn image 2: max score diff = 5e-07, outside the threshold <= 3e-07",
    ]

    report = parity_report()
    report["results"]["mask_rcnn"]["images"][0].update(mask_pixels_differing=3, detectron2=99, matched=99)
    assert mmdet_parity.failed_checks(report) == [
        "mask_rcnn image 1: detections detectron2 / mmdet = 99 / 100, outside the threshold equal counts",
        "mask_rcnn image 1: mask pixels differing = 3, outside the threshold <= 0",
        "mask_rcnn (2 images): unmatched detections = 1, outside the threshold <= 0",
    ]


def test_training_step_parity_fails_on_a_loss_term_and_a_gradient_group():
    assert mmdet_train_parity.failed_checks(train_report()) == []

    report = train_report()
    report["results"]["retinanet"]["losses"]["loss_box_reg"]["relative_difference"] = 3e-06
    report["results"]["retinanet"]["gradients"]["trunk"]["cosine"] = 0.9999
    assert mmdet_train_parity.failed_checks(report) == [
        "retinanet: loss_box_reg relative difference = 3e-06, outside the threshold <= 2.384185791015625e-07",
        "retinanet: trunk gradient cosine = 0.9999, outside the threshold >= 0.99999999995",
    ]


def test_data_parity_checks_the_mmdet_pipeline_only():
    # the plain pipeline differs (and skips the crowd-only image), as the docs show: not a failure
    assert mmdet_data_parity.failed_checks(data_report()) == []

    report = data_report()
    report["summary"]["mmdet"]["8-bit pixels differing / total"] = [17, 11230632]
    report["results"]["mmdet"]["007.jpg flip=False"] = {"skipped": "an image of the pair is not in both training sets"}
    assert mmdet_data_parity.failed_checks(report) == [
        "mask_rcnn data pipeline 'mmdet': 8-bit pixels differing = 17, outside the threshold <= 0",
        "mask_rcnn data pipeline 'mmdet': pairs skipped (an image in one training set only: ['007.jpg flip=False']) = 1, "
        "outside the threshold <= 0",
    ]


def test_trajectory_parity_measures_the_drift_against_the_rounding_control():
    # RetinaNet's documented run: 5.6e-3 against the control's 5.1e-3 passes
    passing = {"results": {"retinanet": trajectory_result(5.6e-03, control_difference=5.1e-03)}}
    assert mmdet_trajectory_parity.failed_checks(passing) == []
    # without --control the drift past 1e-4 is reported, not checked (the docs: out of reach)
    assert mmdet_trajectory_parity.failed_checks({"results": {"retinanet": trajectory_result(5.6e-02)}}) == []

    failing = {"results": {"retinanet": trajectory_result(1.2e-02, control_difference=5.1e-03)}}
    failing["results"]["retinanet"]["losses"]["loss_cls"]["relative_difference"][1] = 3e-06
    failing["results"]["retinanet"]["learning_rate"]["max_relative_difference_per_step"][4] = 1e-09
    assert mmdet_trajectory_parity.failed_checks(failing) == [
        "retinanet: learning rate max relative difference = 1e-09, outside the threshold <= 1e-15",
        "retinanet: loss_cls max relative difference over steps 0-1 = 3e-06, outside the threshold <= 1e-06",
        "retinanet: parameters max relative difference (limit 2 x the control's 0.0051) = 0.012, "
        "outside the threshold <= 0.0102",
    ]

    unmoved = {"results": {"retinanet": trajectory_result(5.6e-03)}}
    unmoved["results"]["retinanet"]["parameters"]["per_group"]["trunk"]["min_relative_change_from_start_of_trained"] = 0.0
    unmoved["results"]["retinanet"]["weight_decay"]["parameters_with_other_weight_decay"] = [["backbone.bn1.weight", 0.0, 0.05]]
    assert mmdet_trajectory_parity.failed_checks(unmoved) == [
        "retinanet: parameters with another weight decay = 1, outside the threshold <= 0",
        "retinanet: trunk smallest relative change of a trained tensor = 0.0, outside the threshold > 0.0",
    ]


def test_side_by_side_check_run_fails_on_unmatched_detections_and_masks():
    assert mmdet_side_by_side.failed_checks(side_by_side_report()) == []
    assert mmdet_side_by_side.failed_checks(side_by_side_report(matched=97, mask_pixels_differing=2)) == [
        "mask_rcnn 307x512: detections matched (mmdet 100, here 100) = 97, outside the threshold == 100",
        "mask_rcnn 307x512: mask pixels differing = 2, outside the threshold <= 0",
    ]
    assert mmdet_side_by_side.failed_checks(side_by_side_report(max_box_diff_px=0.5)) == [
        "mask_rcnn 307x512: max box diff (px) = 0.5, outside the threshold <= 0.0001220703125",
    ]


# ---- main's exit status ---------------------------------------------------------------------------
def _failing_parity_report():
    report = parity_report()
    report["results"]["faster_rcnn"]["images"][0]["max_box_diff_px"] = 0.25
    return report


def _failing_trajectory_report():
    report = {"results": {"retinanet": trajectory_result(5.6e-03)}}
    report["results"]["retinanet"]["weight_decay"]["parameters_with_other_weight_decay"] = [["neck.x", 0.0, 0.05]]
    return report


def _failing_data_report():
    report = data_report()
    report["summary"]["mmdet"]["classes equal"] = False
    return report


def _failing_train_report():
    report = train_report()
    report["results"]["retinanet"]["gradients"]["trunk"]["relative_difference"] = 1e-03
    return report


PARITY_SCRIPTS = {
    "mmdet_parity": (mmdet_parity, parity_report, _failing_parity_report, []),
    "mmdet_train_parity": (mmdet_train_parity, train_report, _failing_train_report, []),
    "mmdet_data_parity": (mmdet_data_parity, data_report, _failing_data_report, []),
    "mmdet_trajectory_parity": (
        mmdet_trajectory_parity,
        lambda: {"results": {"retinanet": trajectory_result(5.6e-03)}},
        _failing_trajectory_report,
        ["--detectors", "retinanet"],
    ),
}


@pytest.mark.parametrize("name", sorted(PARITY_SCRIPTS))
def test_parity_script_exits_1_on_a_failed_figure_unless_no_check(name, monkeypatch, tmp_path, caplog):
    module, passing, failing, options = PARITY_SCRIPTS[name]
    argv = ["--output-dir", str(tmp_path), "--threads", str(torch.get_num_threads())] + options
    measured = {}
    monkeypatch.setattr(module, "run_comparison", lambda args: measured["report"])

    measured["report"] = passing()
    assert module.main(argv) == 0
    measured["report"] = failing()
    with caplog.at_level(logging.WARNING, logger=module.logger.name):
        assert module.main(argv) == 1
    failed = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name == module.logger.name]
    assert failed == ["FAILED " + line for line in module.failed_checks(failing())] and len(failed) == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=module.logger.name):
        assert module.main(argv + ["--no-check"]) == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.fixture
def side_by_side_logging_restored(monkeypatch):
    """mmdet_side_by_side.main configures its logger and quietens other libraries' loggers: undo it."""
    monkeypatch.setattr(mmdet_side_by_side.logger, "handlers", [])
    monkeypatch.setattr(mmdet_side_by_side.logger, "propagate", True)
    names = ("rsb_detectron2.mmdet_side_by_side", "fvcore", "detectron2", "mmdet", "py.warnings")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def test_side_by_side_exits_1_on_a_failed_check_run_unless_no_check(monkeypatch, side_by_side_logging_restored):
    reports = {"report": side_by_side_report()}
    monkeypatch.setattr(mmdet_side_by_side, "run_side_by_side", lambda args: copy.deepcopy(reports["report"]))
    argv = ["--threads", str(torch.get_num_threads())]
    assert mmdet_side_by_side.main(argv) == 0
    reports["report"] = side_by_side_report(max_score_diff=1e-03)
    assert mmdet_side_by_side.main(argv) == 1
    assert mmdet_side_by_side.main(argv + ["--no-check"]) == 0


def test_threads_option_defaults_to_the_documented_two_and_refuses_zero():
    import parity_common

    parser = parity_common.argparse.ArgumentParser()
    parity_common.add_common_arguments(parser, output_dir="/unused")
    args = parser.parse_args([])
    assert args.threads == max(1, min(2, os.cpu_count() or 1)) and args.check
    assert parser.parse_args(["--threads", "3", "--no-check"]).threads == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--threads", "0"])
