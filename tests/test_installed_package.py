"""The project as an installed library: a plain (not editable) pip install, used outside the checkout."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

# Runs in `python3 -I` (no PYTHONPATH, no working directory on sys.path) with the installed copy
# first on sys.path and the editable install's import hook removed. argv: site dir, work dir.
_DRIVER = r'''
import json, os, sys
site, work = sys.argv[1], sys.argv[2]
sys.path.insert(0, site)
sys.meta_path[:] = [f for f in sys.meta_path if "__editable__" not in getattr(f, "__module__", "")]

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog

import rsb_backbone
from rsb_backbone import model_zoo
from rsb_backbone.config import load_config_with_overrides
from rsb_backbone.inference import LazyConfigPredictor, yacs_config_file

config_file = model_zoo.get_config_file("COCO/faster_rcnn_rsb_r50_fpn_1x.py")
overrides = [
    "model.backbone.bottom_up.model_name=resnet18",
    "model.backbone.bottom_up.weights=None",
    "model.roi_heads.num_classes=3",
    "dataloader.test.mapper.augmentations.0.short_edge_length=64",
    "dataloader.test.mapper.augmentations.0.max_size=96",
]
torch.manual_seed(0)
model = instantiate(load_config_with_overrides(config_file, overrides).model)
checkpoint = os.path.join(work, "model.pth")
torch.save({"model": model.state_dict()}, checkpoint)
predictor = LazyConfigPredictor(config_file, checkpoint, device="cpu", score_threshold=0.0, overrides=overrides)
image = np.random.default_rng(0).integers(0, 256, size=(72, 100, 3), dtype=np.uint8)
instances = predictor(image)["instances"]

yacs_cfg = model_zoo.get_config("yacs/mask_rcnn_rsb_r50_fpn_1x.yaml")
lazy_cfg = model_zoo.get_config("shapes/faster_rcnn_rsb_r18_fpn_shapes_quick.py")
print(json.dumps({
    "rsb_backbone": rsb_backbone.__file__,
    "config_file": config_file,
    "yacs_config_file": yacs_config_file("mask_rcnn"),
    "image_size": list(instances.image_size),
    "num_detections": len(instances),
    "box_range": [float(instances.pred_boxes.tensor.min()), float(instances.pred_boxes.tensor.max())],
    "yacs_backbone": yacs_cfg.MODEL.BACKBONE.NAME,
    "yacs_rsb_norm": yacs_cfg.MODEL.RSB.NORM,
    "shapes_test_set": lazy_cfg.dataloader.test.dataset.names,
    "registered_shapes": sorted(n for n in DatasetCatalog.list() if n.startswith("rsb_shapes_")),
    "module_files": sorted({getattr(m, "__file__", None) or "" for m in list(sys.modules.values())} - {""}),
}))
'''


def _copy_sources(destination: str) -> None:
    """The working tree without version control, build products, outputs or data sets."""
    anywhere = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "*.pth")
    in_the_root = {"output", "outputs", "datasets"}  # run outputs; not the package's data/datasets/

    def ignore(folder, names):
        return set(anywhere(folder, names)) | (in_the_root & set(names) if folder == REPO_ROOT else set())

    shutil.copytree(REPO_ROOT, destination, ignore=ignore)


@pytest.mark.slow
def test_installed_copy_builds_a_predictor_from_a_packaged_config(tmp_path):
    source, site, work = tmp_path / "source", tmp_path / "site", tmp_path / "work"
    _copy_sources(str(source))  # pip builds in the source folder; keep the checkout clean
    work.mkdir()
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
         "--target", str(site), str(source)],
        check=True, capture_output=True, text=True, timeout=600,
    )
    shutil.rmtree(source)  # nothing of the sources is left to import from but the installed copy

    result = subprocess.run(
        [sys.executable, "-I", "-c", _DRIVER, str(site), str(work)],
        cwd=str(work), capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])

    packaged = os.path.join(str(site), "rsb_backbone", "model_zoo", "configs")
    assert seen["rsb_backbone"] == os.path.join(str(site), "rsb_backbone", "__init__.py")
    assert seen["config_file"] == os.path.join(packaged, "COCO", "faster_rcnn_rsb_r50_fpn_1x.py")
    assert seen["yacs_config_file"] == os.path.join(packaged, "yacs", "mask_rcnn_rsb_r50_fpn_1x.yaml")
    assert not [f for f in seen["module_files"] if f.startswith(REPO_ROOT + os.sep)]
    assert [f for f in seen["module_files"] if "rsb_backbone" in f]
    assert all(f.startswith(str(site)) for f in seen["module_files"] if os.sep + "rsb_backbone" + os.sep in f)

    # Random weights at score threshold 0: detections, in the original image's coordinates.
    assert seen["image_size"] == [72, 100] and seen["num_detections"] > 0
    assert 0.0 <= seen["box_range"][0] <= seen["box_range"][1] <= 100.0
    assert (seen["yacs_backbone"], seen["yacs_rsb_norm"]) == ("build_rsb_resnet_fpn_backbone", "FrozenStatsBN")
    # The shapes configs load, and their data sets are the installed package's builtin ones.
    assert seen["shapes_test_set"] == "rsb_shapes_val"
    assert seen["registered_shapes"] == ["rsb_shapes_train", "rsb_shapes_val"]


def _declared_distributions() -> set:
    import re

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        pytest.skip("tomllib (Python 3.11+) reads pyproject.toml")
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    declared = list(project["dependencies"]) + [d for extra in project["optional-dependencies"].values() for d in extra]
    return {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}


def test_every_package_the_library_imports_is_declared_in_pyproject():
    """A plain ``pip install .`` brings what ``import rsb_backbone`` and its modules need: each
    third-party top-level import of the package is provided by a declared distribution (detectron2
    excepted: no PyPI release, installed first from git)."""
    import ast
    import importlib.metadata
    import sys as _sys

    providers = importlib.metadata.packages_distributions()
    imported = set()
    for folder, _, files in os.walk(os.path.join(REPO_ROOT, "rsb_backbone")):
        for name in [f for f in files if f.endswith(".py")]:
            with open(os.path.join(folder, name)) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    imported |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(_sys.stdlib_module_names) - {"rsb_backbone", "detectron2"}
    declared = _declared_distributions()
    undeclared = {}
    for module in sorted(third_party):
        distributions = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if not distributions & declared:
            undeclared[module] = sorted(distributions)
    assert not undeclared, f"imported by rsb_backbone but not declared in pyproject.toml: {undeclared}"
    assert {"torch", "timm", "fvcore", "pycocotools"} <= declared
