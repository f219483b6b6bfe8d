"""projects/benchmark: the baseline is the RSB model's function, and the command runs end to end."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.backbone import ResNet

from conftest import REPO_ROOT, randomize_batchnorm
from rsb_backbone import TimmResNet
from rsb_backbone.config import head_config

BENCHMARK_DIR = os.path.join(REPO_ROOT, "projects", "benchmark")
SCRIPT = os.path.join(BENCHMARK_DIR, "benchmark.py")
if BENCHMARK_DIR not in sys.path:
    sys.path.insert(0, BENCHMARK_DIR)

import detectron2_baseline  # noqa: E402  (lives in projects/benchmark)

_spec = importlib.util.spec_from_file_location("rsb_benchmark", SCRIPT)
benchmark = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(benchmark)

CPU = torch.device("cpu")
SIZE = (64, 96)


def _norm_layout(trunk):
    """Sorted (type, channels, training) of the trunk's norm layers (the two order them differently)."""
    norms = (torch.nn.BatchNorm2d, FrozenBatchNorm2d)
    return sorted((type(m).__name__, m.num_features, m.training) for m in trunk.modules() if isinstance(m, norms))


def test_baseline_trunk_matches_the_rsb_trunk_in_kind_and_cost():
    cfg = benchmark.load_detector_config("faster_rcnn")
    models = benchmark.build_pair(cfg, CPU, channels_last=False, score_thresh=0.0)
    ours, theirs = models["rsb"].backbone.bottom_up, models["builtin"].backbone.bottom_up
    assert isinstance(ours, TimmResNet)
    assert isinstance(theirs, ResNet)
    for model in models.values():
        model.train()
    # Same norm layer types in the same order, all BatchNorm in eval mode (FrozenStatsBN).
    assert _norm_layout(ours) == _norm_layout(theirs)
    assert {training for kind, _, training in _norm_layout(theirs) if kind == "BatchNorm2d"} == {False}
    frozen = [kind for kind, _, _ in _norm_layout(theirs)].count("FrozenBatchNorm2d")
    assert frozen == 1 + 3 * 3 + 1  # stem, res2's three blocks (3 convs each) and its shortcut
    # Same trainable parameters, in number and size.
    trainable = {
        name: sorted(p.numel() for p in model.parameters() if p.requires_grad) for name, model in models.items()
    }
    assert trainable["rsb"] == trainable["builtin"]
    assert ours.output_shape() == theirs.output_shape()


@pytest.mark.parametrize("detector", ["mask_rcnn", "retinanet"])
def test_baseline_gives_the_same_detections_and_losses(detector):
    cfg = benchmark.load_detector_config(detector)
    # The same check with less CPU time: ResNet-18 trunk, fewer proposals, RoIs and detections.
    cfg.model.backbone.bottom_up.model_name = "resnet18"
    if detector == "retinanet":
        cfg.model.test_topk_candidates = 100
        cfg.model.max_detections_per_image = 10
    else:
        cfg.model.proposal_generator.post_nms_topk = (100, 50)
        cfg.model.roi_heads.batch_size_per_image = 32
        cfg.model.roi_heads.box_predictor.test_topk_per_image = 10
    torch.manual_seed(0)
    models = {"rsb": benchmark.instantiate(cfg.model)}
    randomize_batchnorm(models["rsb"].backbone.bottom_up)  # non-trivial statistics to copy
    models["builtin"] = benchmark.instantiate(detectron2_baseline.baseline_model_config(cfg.model))
    detectron2_baseline.copy_rsb_weights(models["rsb"], models["builtin"])

    images = benchmark.make_batch(1, SIZE, CPU, seed=1)
    outputs = {}
    for name, model in models.items():
        benchmark.set_score_threshold(model, 0.0)
        with torch.no_grad():
            outputs[name] = model.eval()(images)
    assert len(outputs["rsb"][0]["instances"]) > 0
    assert detectron2_baseline.max_output_difference(outputs["rsb"], outputs["builtin"]) == 0.0

    train_batch = benchmark.make_batch(
        2, SIZE, CPU, seed=2, num_classes=head_config(cfg).num_classes, with_masks=detector == "mask_rcnn"
    )
    losses = {}
    for name, model in models.items():
        torch.manual_seed(0)  # the same proposal sampling
        with benchmark.EventStorage():
            losses[name] = model.train()(train_batch)
    assert losses["rsb"].keys() == losses["builtin"].keys()
    for key, value in losses["rsb"].items():
        torch.testing.assert_close(value, losses["builtin"][key], rtol=0, atol=0)


def test_max_output_difference_sees_a_changed_box():
    from detectron2.structures import Boxes, Instances

    instances = Instances((10, 10), pred_boxes=Boxes(torch.tensor([[1.0, 1.0, 5.0, 5.0]])), scores=torch.ones(1))
    moved = Instances((10, 10), pred_boxes=Boxes(torch.tensor([[1.0, 1.5, 5.0, 5.0]])), scores=torch.ones(1))
    assert detectron2_baseline.max_output_difference([{"instances": instances}], [{"instances": moved}]) == 0.5
    assert detectron2_baseline.max_output_difference([{"instances": instances}], []) == float("inf")


def test_baseline_rejects_what_it_cannot_mirror():
    with pytest.raises(ValueError, match="resnet50d"):
        detectron2_baseline.build_detectron2_resnet(model_name="resnet50d")
    with pytest.raises(ValueError, match="norm='GN'"):
        detectron2_baseline.build_detectron2_resnet(norm="GN")
    cfg = benchmark.load_detector_config("faster_rcnn")
    cfg.model.backbone.bottom_up = detectron2_baseline.baseline_model_config(cfg.model).backbone.bottom_up
    with pytest.raises(ValueError, match="expected TimmResNet"):
        detectron2_baseline.baseline_model_config(cfg.model)


def test_timm_keys_map_to_detectron2_keys():
    rename = detectron2_baseline.timm_to_detectron2_key
    assert rename("conv1.weight") == "stem.conv1.weight"
    assert rename("bn1.running_var") == "stem.conv1.norm.running_var"
    assert rename("layer1.0.bn3.bias") == "res2.0.conv3.norm.bias"
    assert rename("layer4.0.downsample.0.weight") == "res5.0.shortcut.weight"
    assert rename("layer4.0.downsample.1.weight") == "res5.0.shortcut.norm.weight"


def test_image_size_argument():
    assert benchmark.parse_image_size("320") == (320, 320)
    assert benchmark.parse_image_size("800x1333") == (800, 1333)
    for bad in ("big", "16", "800x"):
        with pytest.raises(Exception, match="image size"):
            benchmark.parse_image_size(bad)


def _fake_report(device):
    metrics = {key: {"rsb": 2.0, "builtin": 4.0, "ratio": 0.5} for key, _, _ in benchmark.METRICS}
    metrics["train_peak_mem_mib"] = {"rsb": 4096.0, "builtin": 2048.0, "ratio": 2.0}
    return {
        "settings": {
            "device": device, "image_size": [800, 1333], "batch_size": 8, "train_batch_size": 2,
            "iters": 5, "warmup": 1, "amp": False, "channels_last": False,
        },
        "machine": {"cpu": "Some CPU", "torch_threads": 2, "torch": "2.x", "gpu": "Some GPU"},
        "results": [{"detector": "cascade_mask_rcnn", "metrics": metrics}],
    }


def _rows(table, detector="cascade_mask_rcnn"):
    return [line for line in table.splitlines() if line.startswith(f"| {detector} |")]


def test_table_shows_the_deployment_forms():
    report = _fake_report("cpu")
    metrics = report["results"][0]["metrics"]
    metrics["latency_b1_ms_folded"] = {"rsb_folded": 3.0, "builtin": 4.0, "ratio": 0.75}
    metrics["latency_b1_ms_onnx"] = {
        "onnx": 2.0, "builtin": 4.0, "ratio": 0.5, "ratio_q1": 0.48, "ratio_q3": 0.53,
        "ratio_to_rsb": {"onnx": 2.0, "rsb": 2.5, "ratio": 0.8, "ratio_q1": 0.79, "ratio_q3": 0.82},
    }
    table = benchmark.format_table(report)
    assert _rows(table)[-3:] == [
        "| cascade_mask_rcnn | latency b1 folded / built-in (ms) | 3.0 | 4.0 | 0.750 | - |",
        "| cascade_mask_rcnn | latency b1 ONNX Runtime / built-in (ms) | 2.0 | 4.0 | 0.50 (0.48-0.53) | 5 |",
        "| cascade_mask_rcnn | latency b1 ONNX Runtime / RSB (ms) | 2.0 | 2.5 | 0.80 (0.79-0.82) | 5 |",
    ]
    assert "time/img b8 folded" not in table  # not measured in this report: no row


def test_table_has_rows_only_for_what_the_run_measured():
    # --no-train --no-throughput: batch-1 latency only
    report = _fake_report("cpu")
    report["settings"].update(train=False, throughput=False)
    metrics = report["results"][0]["metrics"]
    for key in list(metrics):
        if key != "latency_b1_ms":
            del metrics[key]
    table = benchmark.format_table(report)
    assert "| detector | figure | RSB | built-in | ratio RSB / built-in | pairs |" in table
    assert _rows(table) == ["| cascade_mask_rcnn | latency b1 (ms) | 2.0 | 4.0 | 0.500 | - |"]
    assert "batch 1 for inference; amp=False" in table


def test_cuda_table_compares_memory_with_mmdetection():
    table = benchmark.format_table(_fake_report("cuda"))
    assert "Some GPU" in table and "time/img b8 (ms)" in table
    assert "cascade_mask_rcnn 4.00 / 2.00 GiB (mmdet 6.2 GB)" in table  # MiB -> GiB, and mmdet's 6.2 GB
    assert "| cascade_mask_rcnn | latency b1 (ms) | 2.0 | 4.0 | 0.500 | - |" in _rows(table)


def test_precision_table_pairs_each_figure_with_float32():
    report = _fake_report("cpu")
    report["settings"].update(precision="bfloat16")
    report["results"][0]["metrics"] = {
        "latency_b1_ms": {"float32": 5000.0, "bfloat16": 2500.0, "ratio": 0.51, "ratio_q1": 0.5, "ratio_q3": 0.53},
        "train_step_ms": {"float32": 24000.0, "bfloat16": 15500.0, "ratio": 0.64, "ratio_q1": 0.6, "ratio_q3": 0.7},
        "train_peak_mem_mib": {"float32": 4000.0, "bfloat16": 3000.0, "ratio": 0.75},
    }
    table = benchmark.format_table(report)
    assert "| detector | figure | bfloat16 | float32 | ratio bfloat16 / float32 | pairs |" in table
    assert _rows(table) == [
        "| cascade_mask_rcnn | latency b1 (ms) | 2,500.0 | 5,000.0 | 0.51 (0.50-0.53) | 5 |",
        "| cascade_mask_rcnn | train step (ms) | 15,500.0 | 24,000.0 | 0.64 (0.60-0.70) * | 5 |",
        "| cascade_mask_rcnn | train peak mem (MiB) | 3,000.0 | 4,000.0 | 0.750 | - |",
    ]
    assert "the RSB model in float32 and in bfloat16" in table


def test_precision_option_refuses_fp16_on_the_cpu_and_amp(capsys):
    for argv, message in (
        (["--device", "cpu", "--precision", "float16"], "--precision=float16 needs a CUDA device"),
        (["--device", "cpu", "--precision", "bfloat16", "--amp"], "--amp does not go with it"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow
def test_benchmark_command_prints_the_side_by_side_table(tmp_path):
    out = tmp_path / "bench.json"
    command = [
        sys.executable, SCRIPT, "--device", "cpu", "--detectors", "faster_rcnn",
        "--image-size", "64", "--batch-size", "2", "--iters", "1", "--warmup", "0",
        "--threads", "1", "--json", str(out), "--no-check",  # one thread: the figures do not matter, only the run
    ]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    table = result.stdout
    figures = [line.split(" | ")[1] for line in _rows(table, "faster_rcnn")]
    for _, title, unit in benchmark.METRICS:
        assert f"{title} ({unit})".replace("bN", "b2") in figures, table
    assert "fvcore FLOPs of one inference (G)" in figures
    assert "latency b1 ONNX Runtime / built-in (ms)" in figures
    assert "Device: cpu" in table

    report = json.loads(out.read_text())
    assert report["settings"]["image_size"] == [64, 64]
    assert report["machine"]["cpu_count"] >= 1
    (record,) = report["results"]
    assert record["detector"] == "faster_rcnn"
    assert record["outputs_identical"] is True
    assert record["detections_per_image"] == 100
    for key, _, _ in benchmark.METRICS:
        metric = record["metrics"][key]
        assert metric["rsb"] > 0 and metric["builtin"] > 0, (key, metric)
        assert metric["ratio"] == pytest.approx(metric["rsb"] / metric["builtin"])
    assert len(record["samples_ms"]["train_step_ms"]["rsb"]) == 1
    # The deployment forms: the folded model and ONNX Runtime, timed in the same run.
    for key, _, variant, source in benchmark.DEPLOY_METRICS:
        metric = record["metrics"][key]
        assert metric[variant] > 0 and metric["ratio"] == pytest.approx(metric[variant] / metric["builtin"])
        to_rsb = metric["ratio_to_rsb"]  # against the PyTorch model of the same run
        assert to_rsb["rsb"] == record["metrics"][source]["rsb"]
        assert to_rsb["ratio"] == pytest.approx(to_rsb[variant] / to_rsb["rsb"])
    # fvcore's count: the same network in both models, so the same FLOPs.
    assert record["gflops"]["rsb"] > 0
    assert record["gflops"]["rsb"] == pytest.approx(record["gflops"]["builtin"], rel=1e-6)


scale_benchmark = importlib.import_module("scale_benchmark")  # projects/benchmark is on sys.path


def test_scale_summary_pairs_each_form_with_the_predictor_round_by_round():
    def replies(seconds, peaks):
        return [{"seconds": s, "peak_rss_mib": p, "detections": 100} for s, p in zip(seconds, peaks)]

    samples = {
        # a loaded second round slows both forms: the per-round ratios stay 0.5 and 0.6
        "predictor": replies([2.0, 8.0, 2.0], [1000, 1200, 1100]),
        "onnx": replies([1.0, 4.8, 1.1], [900, 1500, 1000]),
    }
    size = scale_benchmark.summarize_size(2048, (1536, 2048), samples)
    onnx = size["forms"]["onnx"]
    assert onnx["time_ratio"]["median"] == pytest.approx(0.55)
    assert (onnx["time_ratio"]["q1"], onnx["time_ratio"]["q3"]) == pytest.approx((0.525, 0.575))
    assert onnx["median_ms"] == pytest.approx(1100.0)
    assert onnx["peak_rss_mib"] == 1500 and onnx["memory_ratio"] == pytest.approx(1500 / 1200)
    assert size["pixels"] == 1536 * 2048

    report = {
        "settings": {"forms": ["predictor", "onnx"], "threads": 2, "iters": 3, "warmup": 1},
        "machine": {"cpu": "Some CPU", "torch": "2.x", "onnxruntime": "1.x"},
        "results": [{"detector": "mask_rcnn", "sizes": [size]}],
    }
    row = [line for line in scale_benchmark.format_table(report).splitlines() if line.startswith("| mask_rcnn")]
    assert row == ["| mask_rcnn | 2048x1536 | 100 | 2000 | 1200 | 1100 | 1500 | 0.55 (0.53-0.57) | 1.25 |"]


@pytest.mark.slow
def test_both_benchmarks_measure_a_trained_model_on_a_real_image(trained_detectors, tiny_shapes, tmp_path):
    """``--trained`` rows: a train_net.py run's config.yaml and checkpoint, measured on a real
    image; the built-in twin gives the trained model's outputs, and at every size the exported form
    keeps the predictor's detections (a trained RPN, whose scores random weights never give)."""
    mask_rcnn = trained_detectors["mask_rcnn"]
    image = os.path.join(tiny_shapes["val"]["image_root"], sorted(os.listdir(tiny_shapes["val"]["image_root"]))[0])
    trained = ["--trained", "shapes_mask_rcnn", mask_rcnn.config, mask_rcnn.checkpoint, "--image", image]
    out = tmp_path / "bench.json"
    command = [
        sys.executable, SCRIPT, "--device", "cpu", "--detectors", *trained, "--image-size", "128",
        "--iters", "1", "--warmup", "0", "--no-train", "--no-throughput", "--no-flops", "--threads", "1",
        "--json", str(out), "--no-check",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = json.loads(out.read_text())["results"]
    assert record["detector"] == "shapes_mask_rcnn" and record["checkpoint"] == mask_rcnn.checkpoint
    assert record["outputs_identical"] is True and 0 < record["detections_per_image"] <= 100
    assert any(line.startswith("| shapes_mask_rcnn |") for line in result.stdout.splitlines())

    scale_out = tmp_path / "scale.json"
    command = [
        sys.executable, os.path.join(BENCHMARK_DIR, "scale_benchmark.py"), "--detectors", *trained,
        "--sizes", "160", "400", "--forms", "predictor", "onnx", "--iters", "1", "--warmup", "0",
        "--threads", "1", "--workdir", str(tmp_path / "work"), "--json", str(scale_out), "--no-check",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    (record,) = json.loads(scale_out.read_text())["results"]
    for size in record["sizes"]:
        forms = size["forms"]
        assert forms["predictor"]["detections"] > 0, size
        assert forms["onnx"]["detections"] == forms["predictor"]["detections"], size


def test_the_benchmarks_name_a_missing_trained_file(tmp_path, capsys):
    missing = str(tmp_path / "model_final.pth")
    for script in (benchmark, scale_benchmark):
        with pytest.raises(SystemExit) as exit_info:
            script.main(["--detectors", "--trained", "x", missing, missing])
        assert exit_info.value.code == 2
        assert f"{missing}: no such file" in capsys.readouterr().err


registration_benchmark = importlib.import_module("registration_benchmark")  # projects/benchmark


def _registration_summary(time_ratio, peak_ratio, held_mib):
    samples = {
        "detectron2": [{"registration_s": 0.0, "to_serialised_s": 10.0, "held_after_registration_mib": 0.0,
                        "peak_mib": 1000.0, "peak_over_start_mib": 500.0}],
        "checked": [{"registration_s": 0.1, "to_serialised_s": 10.0 * time_ratio, "held_after_registration_mib": held_mib,
                     "peak_mib": 1000.0 * peak_ratio, "peak_over_start_mib": 500.0 * peak_ratio}],
    }
    return registration_benchmark.summarize(samples)


def test_registration_benchmark_fails_on_each_figure_outside_its_target():
    assert registration_benchmark.failed_checks(_registration_summary(1.19, 1.0, 8.0)) == []
    (slow,) = registration_benchmark.failed_checks(_registration_summary(1.25, 1.0, 8.0))
    assert slow.startswith("to_serialised_s: checked / Detectron2 = 1.25")
    (large,) = registration_benchmark.failed_checks(_registration_summary(1.0, 1.3, 8.0))
    assert large.startswith("peak_mib: checked / Detectron2 = 1.3")
    (held,) = registration_benchmark.failed_checks(_registration_summary(1.0, 1.0, 2400.0))
    assert held.startswith("held_after_registration_mib: 2400 MiB")


@pytest.mark.slow
def test_registration_benchmark_command_prints_both_columns(tmp_path):
    """A small file of the same make: both loaders load the same training images; exit 0 or 1 by the checks."""
    command = [sys.executable, os.path.join(BENCHMARK_DIR, "registration_benchmark.py"), "--data-dir", str(tmp_path / "data"),
               "--images", "300", "--annotations", "2000", "--categories", "5", "--rounds", "1", "--json", str(tmp_path / "r.json")]
    result = subprocess.run(command + ["--no-check"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| time to the serialised training set (s) |" in result.stdout
    report = json.loads((tmp_path / "r.json").read_text())
    (plain,), (checked,) = report["samples"]["detectron2"], report["samples"]["checked"]
    assert plain["training_images"] == checked["training_images"] > 250  # images with annotations
    with open(tmp_path / "data" / "instances.json") as f:
        data = json.load(f)
    assert (len(data["images"]), len(data["annotations"]), len(data["categories"])) == (300, 2000, 5)
    assert len(os.listdir(tmp_path / "data" / "images")) == 300


def _benchmark_report(precision=None, identical=True, latency=(1.0, 0.98, 1.02), memory=1.02):
    def timed(ratio):
        median, q1, q3 = ratio
        return {"ratio": median, "ratio_q1": q1, "ratio_q3": q3}

    if precision:
        metrics = {"latency_b1_ms": timed(latency), "train_step_ms": timed((0.65, 0.6, 0.68))}
        return {"settings": {"precision": precision}, "results": [{"detector": "mask_rcnn", "metrics": metrics}]}
    metrics = {"latency_b1_ms": timed(latency), "train_peak_mem_mib": {"ratio": memory},
               "latency_b1_ms_onnx": timed((3.0, 2.9, 3.1))}  # deployment forms: reported, not checked
    record = {"detector": "mask_rcnn", "outputs_identical": identical, "max_output_difference": 0.0 if identical else 0.5,
              "metrics": metrics}
    return {"settings": {}, "results": [record]}


def test_benchmark_fails_on_differing_outputs_and_resolved_ratios_only():
    assert benchmark.failed_checks(_benchmark_report()) == []
    assert benchmark.failed_checks(_benchmark_report(latency=(1.10, 1.0, 1.2))) == []  # not resolved
    (slower,) = benchmark.failed_checks(_benchmark_report(latency=(1.12, 1.08, 1.2)))
    assert slower == "mask_rcnn latency_b1_ms: RSB / built-in = 1.12 (1.08-1.20), above 1.05 for the same network"
    (larger,) = benchmark.failed_checks(_benchmark_report(memory=1.2))
    assert larger.startswith("mask_rcnn train_peak_mem_mib: RSB / built-in = 1.20")
    (differ,) = benchmark.failed_checks(_benchmark_report(identical=False))
    assert differ.startswith("mask_rcnn: RSB and built-in outputs differ by up to 0.5")
    assert benchmark.failed_checks(_benchmark_report("bfloat16", latency=(0.55, 0.5, 0.62))) == []
    (missed,) = benchmark.failed_checks(_benchmark_report("bfloat16", latency=(0.7, 0.66, 0.72)))
    assert missed == "mask_rcnn latency_b1_ms: bfloat16 / float32 = 0.70 (0.66-0.72), above the goal 0.6"


def test_scale_benchmark_fails_on_a_form_resolved_above_the_target():
    def size(time_q1, memory, detections):
        predictor = {"detections": 100}
        onnx = {"time_ratio": {"median": time_q1 + 0.02, "q1": time_q1, "q3": time_q1 + 0.04},
                "memory_ratio": memory, "detections": detections}
        return {"image_size": [1536, 2048], "forms": {"predictor": predictor, "onnx": onnx}}

    report = {"results": [{"detector": "mask_rcnn", "sizes": [size(0.7, 1.05, 100)]}]}
    assert scale_benchmark.failed_checks(report) == []
    report["results"][0]["sizes"] = [size(1.25, 1.22, 99)]
    assert scale_benchmark.failed_checks(report) == [
        "mask_rcnn 2048x1536 onnx: time / predictor = 1.27 (1.25-1.29), above 1.2",
        "mask_rcnn 2048x1536 onnx: peak memory / predictor = 1.22, above 1.2",
        "mask_rcnn 2048x1536 onnx: 99 detections, the predictor 100",
    ]
