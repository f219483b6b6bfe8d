"""mmdetection's released detectors by name (``mmdet://``), against a real HTTP server on
127.0.0.1 that stands in for mmdetection's download site through ``RSB_MMDET_BASE_URL`` (the
variable a mirror would use): the release is downloaded once, checked, converted, cached and used
by ``train_net.py`` (training and ``--eval-only``), both predictors, the prediction demo, the exporter,
the publisher and ``model_zoo.get``; a later use makes no request; each broken download ends in one
line and leaves nothing in the cache.

The served file is an mmdetection v2 Mask R-CNN checkpoint written here (the layout of
tests/test_mmdet_conversion.py) with COCO's class names, named as mmdetection names its releases
(``..._<date>_<time>-<sha256[:8]>.pth``). Its random weights put every box in class 0 ("person"):
a model that runs with them detects persons only, one that did not load them detects nothing.
The test's release replaces the table's Mask R-CNN entry only while the tests run.
"""

import contextlib
import dataclasses
import hashlib
import importlib.util
import http.server
import json
import logging
import os
import socket
import subprocess
import sys
import threading
from collections import Counter

import cv2
import pytest
import torch

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.engine import DefaultPredictor
from detectron2.utils.file_io import PathManager

from rsb_backbone import model_zoo
from rsb_backbone.checkpoint import catalog
from rsb_backbone.checkpoint.catalog import (
    BASE_URL_ENV,
    CACHE_ENV,
    CheckpointDownloadError,
    ReleasedCheckpoint,
    fetch_released_checkpoint,
)
from rsb_backbone.checkpoint.publishing import publish_checkpoint
from rsb_backbone.checkpoint.tensor_files import load_tensor_file
from rsb_backbone.mmdet_conversion import DEFAULT_CONFIGS, DETECTORS
from rsb_backbone.inference import LazyConfigPredictor, build_default_predictor, get_rsb_cfg

from conftest import REPO_ROOT
from test_mmdet_conversion import save_mmdet_checkpoint, synthesize_state_dict
from train_net_runner import train_net_in_process

NAME = "mask_rcnn_rsb_r50_fpn_1x"
CONFIG = "COCO/mask_rcnn_rsb_r50_fpn_1x_mmdet.py"
COCO_THINGS = [c for c in COCO_CATEGORIES if c["isthing"]]
MODEL_DIR = "resnet_strikes_back/mask_rcnn_r50_fpn_rsb-pretrain_1x_coco"
CPU_SIZED = [  # CPU time: 128-px images, 100 proposals, 10 detections per image
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=192",
    "model.proposal_generator.post_nms_topk=[100,100]",
    "+model.roi_heads.box_predictor.test_topk_per_image=10",
]


# ---- the server ----------------------------------------------------------------------------------


class ReleaseServer:
    """mmdetection's download site on 127.0.0.1: ``files`` maps a URL path to its bytes and how it
    is sent ("whole", or "half": the full Content-Length, half of the bytes, then the connection
    closes); ``requests`` counts the GET requests per path."""

    def __init__(self):
        self.files, self.requests = {}, Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                path = self.path.lstrip("/")
                server.requests[path] += 1
                if path not in server.files:
                    self.send_error(404)
                    return
                data, how = server.files[path]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2] if how == "half" else data)
                self.close_connection = True

            def log_message(self, *args):  # no request lines on stderr
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens (a port just released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@pytest.fixture(autouse=True)
def only_127_0_0_1(monkeypatch):
    """Every connection these tests open goes to 127.0.0.1 (urllib connects through
    ``socket.create_connection``); any other host fails the test."""
    connect = socket.create_connection

    def local_only(address, *args, **kwargs):
        assert address[0] == "127.0.0.1", f"connection to {address} outside 127.0.0.1"
        return connect(address, *args, **kwargs)

    monkeypatch.setattr(socket, "create_connection", local_only)


@pytest.fixture(scope="session")
def release_file(tmp_path_factory):
    """(bytes, ReleasedCheckpoint) of a Mask R-CNN in mmdetection's layout, named by its hash."""
    state_dict = synthesize_state_dict("mask_rcnn", seed=7)
    bias = torch.full((81,), -4.0)  # mmdetection's fc_cls: 80 classes, background last
    bias[0] = 4.0  # every box a "person"
    state_dict["roi_head.bbox_head.fc_cls.bias"] = bias
    path = tmp_path_factory.mktemp("release") / "mask_rcnn.pth"
    save_mmdet_checkpoint(path, state_dict, classes=[c["name"] for c in COCO_THINGS])
    data = path.read_bytes()
    sha8 = hashlib.sha256(data).hexdigest()[:8]
    stem = "mask_rcnn_r50_fpn_rsb-pretrain_1x_coco_20220113_174054"
    release = ReleasedCheckpoint(
        name=NAME,
        detector="mask_rcnn",
        config=CONFIG,
        url_path=f"{MODEL_DIR}/{stem}-{sha8}.pth",
        sha256_prefix=sha8,
        num_bytes=len(data),
        box_ap=41.2,
        mask_ap=38.2,
    )
    return data, release


@pytest.fixture(scope="session")
def server(release_file):
    data, release = release_file
    server = ReleaseServer()
    server.files[release.url_path] = (data, "whole")
    yield server
    server.close()


@contextlib.contextmanager
def serving(release, base_url: str, cache: str):
    """The test's release in the table, mmdetection's site at ``base_url``, the cache at ``cache``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(catalog.RELEASED_CHECKPOINTS, release.name, release)
        patch.setenv(BASE_URL_ENV, base_url)
        patch.setenv(CACHE_ENV, cache)
        yield


@pytest.fixture(scope="session")
def session_cache(release_file, server, tmp_path_factory):
    """A cache folder into which the release was downloaded and converted once."""
    _, release = release_file
    cache = str(tmp_path_factory.mktemp("cache"))
    with serving(release, server.base_url, cache):
        fetch_released_checkpoint(NAME)
    return cache


@pytest.fixture
def cached(release_file, server, session_cache):
    """The session's cache, the test's release and the server in use for one test; gives the
    converted file."""
    with serving(release_file[1], server.base_url, session_cache):
        yield fetch_released_checkpoint(NAME)


@pytest.fixture
def requests_made(server, release_file):
    """A function giving the number of requests of the release made since the test started."""
    path = release_file[1].url_path
    before = server.requests[path]
    return lambda: server.requests[path] - before


def cache_contents(cache) -> list:
    """The files of a cache folder, less the conversion's lock file (iopath's ``file_lock``, which
    processes sharing the cache wait on; it holds nothing)."""
    return sorted(f for f in os.listdir(cache) if not f.endswith("_detectron2.pth.lock"))


# ---- download, verify, convert, cache ------------------------------------------------------------


def test_first_use_downloads_checks_converts_and_caches(release_file, server, requests_made, tmp_path, caplog, capfd):
    data, release = release_file
    cache = tmp_path / "cache"
    with serving(release, server.base_url, str(cache)), caplog.at_level(logging.INFO):
        converted = PathManager.get_local_path(f"mmdet://{NAME}")  # as Detectron2's checkpointer resolves it
    assert requests_made() == 1
    downloaded = cache / release.file_name
    assert converted == str(cache / (release.file_name[: -len(".pth")] + "_detectron2.pth"))
    assert cache_contents(cache) == sorted([downloaded.name, os.path.basename(converted)])
    assert downloaded.read_bytes() == data
    # Progress: a log line naming the URL and the size, and torch hub's kind of progress bar.
    assert f"Downloading {server.base_url}{release.url_path} ({len(data)} bytes)" in caplog.text
    assert release.file_name in capfd.readouterr().err
    written = load_tensor_file(converted)
    assert written["mmdet_conversion"]["detector"] == "mask_rcnn"
    assert written["mmdet_conversion"]["source"] == release.file_name
    assert written["metadata"]["thing_classes"] == [c["name"] for c in COCO_THINGS]
    assert torch.equal(written["model"]["roi_heads.box_predictor.cls_score.bias"][:2], torch.tensor([4.0, -4.0]))

    with serving(release, server.base_url, str(cache)):  # a second use reads the cache
        assert PathManager.get_local_path(f"mmdet://{NAME}") == converted
    assert requests_made() == 1


def test_model_zoo_get_trained(cached, requests_made):
    assert model_zoo.get_checkpoint_url(CONFIG) == f"mmdet://{NAME}"
    model = model_zoo.get(CONFIG, trained=True, device="cpu")
    assert not model.training
    assert model.metadata.thing_classes == [c["name"] for c in COCO_THINGS]
    expected = load_tensor_file(cached)["model"]
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert requests_made() == 0  # from the session's cache


def test_the_table_is_mmdetections_releases_and_the_docs_name_them():
    with open(os.path.join(REPO_ROOT, "docs", "mmdet_checkpoints.md")) as f:
        docs = f.read()
    assert sorted(r.detector for r in catalog.RELEASED_CHECKPOINTS.values()) == sorted(DETECTORS)
    for name, release in catalog.RELEASED_CHECKPOINTS.items():
        assert release.url.startswith(catalog.MMDET_BASE_URL + "resnet_strikes_back/")
        assert release.file_name.endswith(f"-{release.sha256_prefix}.pth") and len(release.sha256_prefix) == 8
        assert f"({release.url})" in docs and f"`mmdet://{name}`" in docs
        assert model_zoo.get_checkpoint_url(release.config) == f"mmdet://{name}"
        assert release.config == os.path.relpath(DEFAULT_CONFIGS[release.detector], "configs")


def test_model_zoo_names_the_configs_with_released_weights():
    with pytest.raises(ValueError, match=r"^COCO/mask_rcnn_rsb_r50_fpn_1x\.py: no released checkpoint .* released: .*COCO/mask_rcnn_rsb_r50_fpn_1x_mmdet\.py"):
        model_zoo.get_checkpoint_url("COCO/mask_rcnn_rsb_r50_fpn_1x.py")
    with pytest.raises(ValueError, match=r"^mmdet://mask_rcnn: no released checkpoint of that name; expected one of mmdet://faster_rcnn_rsb_r50_fpn_1x, "):
        fetch_released_checkpoint("mmdet://mask_rcnn")


@pytest.fixture(scope="module")
def image(tiny_shapes):
    val = tiny_shapes["val"]
    with open(val["json_file"]) as f:
        first = json.load(f)["images"][0]["file_name"]
    return cv2.imread(os.path.join(val["image_root"], first))


def _assert_persons(predictor, image):
    instances = predictor(image)["instances"]
    assert len(instances) > 0 and set(instances.pred_classes.tolist()) == {0}
    assert instances.has("pred_masks")
    assert predictor.metadata.thing_classes[0] == "person" and len(predictor.metadata.thing_classes) == 80


def test_lazy_config_predictor_by_name(cached, requests_made, image):
    predictor = LazyConfigPredictor(model_zoo.get_config_file(CONFIG), f"mmdet://{NAME}", overrides=CPU_SIZED)
    _assert_persons(predictor, image)
    assert requests_made() == 0


def test_default_predictor_by_name(cached, requests_made, image):
    cfg = get_rsb_cfg("mask_rcnn", checkpoint=f"mmdet://{NAME}", min_size_test=128, max_size_test=192)
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST, cfg.TEST.DETECTIONS_PER_IMAGE = 100, 10
    predictor = build_default_predictor(cfg)
    assert predictor.cfg.MODEL.WEIGHTS == f"mmdet://{NAME}"
    _assert_persons(predictor, image)
    # Detectron2's own DefaultPredictor reads the name through its PathManager: the same detections.
    own = DefaultPredictor(cfg)(image)["instances"]
    ours = predictor(image)["instances"]
    assert torch.equal(own.pred_classes, ours.pred_classes) and torch.allclose(own.scores, ours.scores)
    assert requests_made() == 0


@pytest.fixture(scope="module")
def coco_classes_data(tiny_shapes, tmp_path_factory):
    """tiny_shapes with COCO's 80 categories (the shapes as COCO's first three), as
    ``--register-coco`` arguments and overrides: data a COCO detector trains and evaluates on."""
    folder, args = tmp_path_factory.mktemp("coco_classes"), []
    for split in ("train", "val"):
        with open(tiny_shapes[split]["json_file"]) as f:
            data = json.load(f)
        data["categories"] = [{"id": c["id"], "name": c["name"]} for c in COCO_THINGS]
        path = folder / f"{split}.json"
        path.write_text(json.dumps(data))  # shapes ids 1-3 are COCO's person, bicycle, car
        args += ["--register-coco", f"coco_classes_{split}={path}:{tiny_shapes[split]['image_root']}"]
    return args + [
        "dataloader.train.dataset.names=coco_classes_train", "dataloader.test.dataset.names=coco_classes_val",
        "dataloader.train.num_workers=0", "dataloader.test.num_workers=0",
    ]  # fmt: skip


@pytest.mark.slow
def test_train_net_eval_only_by_name(cached, requests_made, coco_classes_data, tmp_path):
    import train_net

    output = tmp_path / "eval"
    argv = [
        "--config-file", model_zoo.get_config_file(CONFIG), "--eval-only", *coco_classes_data,
        f"train.init_checkpoint=mmdet://{NAME}", f"train.output_dir={output}", "train.device=cpu",
        *CPU_SIZED,
    ]  # fmt: skip
    results = train_net.main(train_net.build_argument_parser().parse_args(argv))
    assert set(results) == {"bbox", "segm"}
    assert json.loads((output / "eval_results.json").read_text())["bbox"]["AP"] == results["bbox"]["AP"]
    with open(output / "inference" / "coco_instances_results.json") as f:
        detections = json.load(f)
    assert detections and {d["category_id"] for d in detections} == {1}  # COCO's id of "person"
    assert requests_made() == 0


@pytest.mark.slow
def test_train_net_trains_from_a_release_by_name(cached, requests_made, coco_classes_data, tmp_path):
    import train_net

    output = tmp_path / "train"
    argv = [
        "--config-file", model_zoo.get_config_file(CONFIG), *coco_classes_data,
        f"train.init_checkpoint=mmdet://{NAME}", f"train.output_dir={output}", "train.device=cpu",
        "train.max_iter=1", "train.eval_period=0", "train.checkpointer.period=1000",
        "model.backbone.bottom_up.weights=None", "dataloader.train.total_batch_size=2",
        "dataloader.train.mapper.augmentations.0.short_edge_length=[128]",
        "dataloader.train.mapper.augmentations.0.max_size=192", "model.roi_heads.batch_size_per_image=32",
        *CPU_SIZED,
    ]  # fmt: skip
    train_net.main(train_net.build_argument_parser().parse_args(argv))
    trained = load_tensor_file(str(output / "model_final.pth"))["model"]
    released = load_tensor_file(cached)["model"]
    # The frozen stem keeps the released weights; the heads took one step from them.
    assert torch.equal(trained["backbone.bottom_up.conv1.weight"], released["backbone.bottom_up.conv1.weight"])
    head = "roi_heads.box_predictor.cls_score.bias"
    assert not torch.equal(trained[head], released[head])
    assert torch.allclose(trained[head], released[head], atol=1e-2)
    assert requests_made() == 0


def test_prediction_demo_by_name(cached, requests_made, tiny_shapes, tmp_path):
    spec = importlib.util.spec_from_file_location("predict_demo", os.path.join(REPO_ROOT, "projects", "predict_demo", "predict.py"))
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    out = tmp_path / "demo"
    val = tiny_shapes["val"]
    first_image = os.path.join(val["image_root"], sorted(os.listdir(val["image_root"]))[0])
    demo.main(
        ["--config-file", model_zoo.get_config_file(CONFIG), "--checkpoint", f"mmdet://{NAME}",
         "--input", first_image, "--output", str(out), *CPU_SIZED]
    )  # fmt: skip
    detections = json.loads((out / "predictions.json").read_text())
    assert detections and {d["category_id"] for d in detections} == {1}  # COCO's id of "person"
    assert requests_made() == 0


@pytest.mark.slow
def test_exporter_by_name(cached, requests_made, tiny_shapes, tmp_path):
    spec = importlib.util.spec_from_file_location("export_model", os.path.join(REPO_ROOT, "projects", "deploy", "export_model.py"))
    exporter = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(exporter)
    val = tiny_shapes["val"]
    first_image = os.path.join(val["image_root"], sorted(os.listdir(val["image_root"]))[0])
    out = tmp_path / "exported"
    exporter.main(
        ["--config-file", model_zoo.get_config_file(CONFIG), "--checkpoint", f"mmdet://{NAME}", "--format", "torchscript",
         "--output", str(out), "--sample-image", first_image, *CPU_SIZED]
    )  # fmt: skip
    spec = json.loads((out / "model.json").read_text())
    assert spec["metadata"]["thing_classes"][0] == "person"
    assert requests_made() == 0


def test_publisher_by_name(cached, requests_made, tmp_path):
    published = publish_checkpoint(f"mmdet://{NAME}", str(tmp_path / "mask_rcnn_rsb_coco.pth"))
    assert published.metadata["thing_classes"] == [c["name"] for c in COCO_THINGS]
    assert published.num_tensors == len(load_tensor_file(cached)["model"])
    assert requests_made() == 0


# A training process resolving the name: the test's release in the table, then the name.
_FETCH_IN_A_PROCESS = """
import json, sys
from rsb_backbone.checkpoint import catalog
release = catalog.ReleasedCheckpoint(**json.loads(sys.argv[1]))
catalog.RELEASED_CHECKPOINTS[release.name] = release
print(catalog.fetch_released_checkpoint("mmdet://" + release.name))
"""


@pytest.mark.slow
def test_two_processes_download_once(release_file, server, requests_made, tmp_path):
    """Training processes resolving the name together (``--num-gpus 2``, torchrun): one downloads
    and converts while the other waits on the cache's lock, then reads what the first wrote."""
    _, release = release_file
    env = dict(os.environ, **{BASE_URL_ENV: server.base_url, CACHE_ENV: str(tmp_path / "cache")})
    command = [sys.executable, "-c", _FETCH_IN_A_PROCESS, json.dumps(dataclasses.asdict(release))]
    children = [subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [child.communicate(timeout=300) for child in children]
    assert [child.returncode for child in children] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    paths = [out.strip().splitlines()[-1] for out, _ in outputs]
    assert paths[0] == paths[1] and os.path.isfile(paths[0])
    assert requests_made() == 1


# ---- failures: one line, nothing cached -----------------------------------------------------------


@pytest.mark.parametrize("fault", ["corrupted", "wrong_hash", "wrong_size", "closed_half_way"])
def test_broken_download_is_one_line_and_leaves_nothing(fault, release_file, server, tmp_path):
    data, release = release_file
    url_path = f"{MODEL_DIR}/{fault}/{release.file_name}"
    release = ReleasedCheckpoint(**{**release.__dict__, "url_path": url_path})
    served, how = data, "whole"
    if fault == "corrupted":
        served = data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:]
    elif fault == "wrong_hash":
        release = ReleasedCheckpoint(**{**release.__dict__, "sha256_prefix": "00000000"})
    elif fault == "wrong_size":
        release = ReleasedCheckpoint(**{**release.__dict__, "num_bytes": len(data) + 1})
    else:
        how = "half"
    server.files[url_path] = (served, how)
    cache = tmp_path / "cache"
    url = server.base_url + url_path
    with serving(release, server.base_url, str(cache)), pytest.raises(CheckpointDownloadError) as info:
        fetch_released_checkpoint(f"mmdet://{NAME}")
    message = str(info.value)
    assert "\n" not in message and message.startswith(url)
    actual = hashlib.sha256(served).hexdigest()
    expected_message = {
        "corrupted": f"{url} (downloaded): SHA-256 {actual} does not start with {release.sha256_prefix}, the hash in the file name {release.file_name}",
        "wrong_hash": f"{url} (downloaded): SHA-256 {actual} does not start with 00000000, the hash in the file name {release.file_name}",
        "wrong_size": f"{url} (downloaded): {len(data)} bytes, expected {len(data) + 1}",
        "closed_half_way": f"{url}: the connection ended after {len(data) // 2} of {len(data)} bytes; nothing was kept",
    }[fault]
    assert message == expected_message
    assert cache_contents(cache) == []


def test_offline_names_the_url_and_where_to_place_the_file(release_file, tmp_path):
    data, release = release_file
    cache = tmp_path / "cache"
    base_url = closed_port_url()
    with serving(release, base_url, str(cache)):
        with pytest.raises(CheckpointDownloadError) as info:
            fetch_released_checkpoint(f"mmdet://{NAME}")
        destination = cache / release.file_name
        assert str(info.value) == (
            f"{base_url}{release.url_path}: cannot download (Connection refused); without network, "
            f"download it elsewhere and place it at {destination}"
        )
        assert cache_contents(cache) == []

        destination.write_bytes(data[:-1] + b"x")  # placed by hand, but not mmdetection's file
        with pytest.raises(CheckpointDownloadError, match=rf"^{destination} \(placed in the cache; delete it to download again\): SHA-256 [0-9a-f]{{64}} does not start with {release.sha256_prefix}, "):
            fetch_released_checkpoint(f"mmdet://{NAME}")

        destination.write_bytes(data)  # placed by hand: checked and converted, no request needed
        converted = fetch_released_checkpoint(f"mmdet://{NAME}")
    assert load_tensor_file(converted)["mmdet_conversion"]["source"] == release.file_name


def test_train_net_offline_is_one_line(release_file, coco_classes_data, tmp_path):
    _, release = release_file
    cache = tmp_path / "cache"
    base_url = closed_port_url()
    with serving(release, base_url, str(cache)):
        result = train_net_in_process(
            ["--config-file", model_zoo.get_config_file(CONFIG), "--eval-only", *coco_classes_data,
             f"train.init_checkpoint=mmdet://{NAME}", f"train.output_dir={tmp_path / 'eval'}", "train.device=cpu"]
        )  # fmt: skip
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert f"error: {base_url}{release.url_path}: cannot download (Connection refused)" in last
    assert f"place it at {cache / release.file_name}" in last
    assert cache_contents(cache) == []
