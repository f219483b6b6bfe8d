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


def _declared_distributions(extras: bool = True) -> set:
    """The distribution names pyproject.toml declares (normalized): ``dependencies``, and with
    ``extras`` the optional ones too."""
    import re

    try:
        import tomllib
    except ImportError:  # Python < 3.11
        pytest.skip("tomllib (Python 3.11+) reads pyproject.toml")
    with open(os.path.join(REPO_ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    declared = list(project["dependencies"])
    if extras:
        declared += [d for extra in project["optional-dependencies"].values() for d in extra]
    return {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in declared}


def _third_party_imports() -> set:
    """The top-level modules that the package's modules import, less the standard library's,
    rsb_backbone and detectron2 (no PyPI release, installed first from git)."""
    import ast

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
    return imported - set(sys.stdlib_module_names) - {"rsb_backbone", "detectron2"}


def test_every_package_the_library_imports_is_declared_in_pyproject():
    """A plain ``pip install .`` brings what ``import rsb_backbone`` and its modules need: each
    third-party top-level import of the package is provided by a declared distribution (detectron2
    excepted: no PyPI release, installed first from git)."""
    import importlib.metadata

    providers = importlib.metadata.packages_distributions()
    third_party = _third_party_imports()
    declared = _declared_distributions()
    undeclared = {}
    for module in sorted(third_party):
        distributions = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if not distributions & declared:
            undeclared[module] = sorted(distributions)
    assert not undeclared, f"imported by rsb_backbone but not declared in pyproject.toml: {undeclared}"
    assert {"torch", "timm", "fvcore", "pycocotools"} <= declared


# What the fresh environment sees before and after the install: for each distribution name, where
# importlib.metadata finds it; for each module name, where the import system would load it from.
# Runs in `<venv>/bin/python -I`; argv: a JSON list of distribution names, one of module names.
_PROBE = r"""
import importlib.metadata, importlib.util, json, sys, sysconfig

def located(distribution):
    try:
        return str(importlib.metadata.distribution(distribution).locate_file(""))
    except importlib.metadata.PackageNotFoundError:
        return None

def origin(module):
    spec = importlib.util.find_spec(module)
    if spec is None:
        return None
    return spec.origin if spec.has_location else list(spec.submodule_search_locations or [None])[0]

print(json.dumps({
    "site_packages": sysconfig.get_paths()["purelib"],
    "distributions": {d: located(d) for d in json.loads(sys.argv[1])},
    "modules": {m: origin(m) for m in json.loads(sys.argv[2])},
}))
"""

# What an environment "that already has torch and detectron2" holds, besides pip and the standard library.
_PREINSTALLED = ("torch", "torchvision", "detectron2")


def _normalized(name: str) -> str:
    """A distribution name as package indexes compare them (PEP 503)."""
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_closure(roots) -> dict:
    """The installed distributions ``roots`` need, recursively (``roots`` included), by normalized
    name: each one's requirements whose markers hold here, with the extras the requirer asks for."""
    import importlib.metadata

    from packaging.requirements import Requirement

    found, visited, pending = {}, set(), [(root, frozenset()) for root in roots]
    while pending:
        name, extras = pending.pop()
        if (_normalized(name), extras) in visited:
            continue
        visited.add((_normalized(name), extras))
        distribution = importlib.metadata.distribution(name)
        found[_normalized(name)] = distribution
        for line in distribution.requires or []:
            requirement = Requirement(line)
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({"extra": extra}) for extra in sorted(extras) or [""]
            )
            if wanted:
                pending.append((requirement.name, frozenset(requirement.extras)))
    return found


def _files_under(distribution) -> set:
    """The paths (relative to the folder it is installed in) of a distribution's files from its RECORD,
    without those outside that folder (console scripts in bin/)."""
    paths = set()
    for file in distribution.files or []:
        path = os.path.normpath(str(file))
        if not (os.path.isabs(path) or path.startswith(os.pardir + os.sep)):
            paths.add(path)
    return paths


def _link_distributions(distributions, destination: str) -> list:
    """Folders of symbolic links that show just ``distributions`` (their packages, modules, native
    libraries and dist-info folders) of the folders they are installed in, one folder per installation
    folder under ``destination``; returns those folders, for a .pth file. A folder that other
    distributions share (a namespace package such as nvidia/) is made and linked into, not linked."""
    import importlib.metadata

    names = {_normalized(d.metadata["Name"]) for d in distributions}
    roots = sorted({str(d.locate_file("")) for d in distributions})
    folders = []
    for index, root in enumerate(roots):
        shown, hidden = set(), set()
        for distribution in importlib.metadata.distributions(path=[root]):
            mine = _normalized(distribution.metadata["Name"]) in names
            (shown if mine else hidden).update(_files_under(distribution))
        hidden_folders = {os.path.dirname(path) for path in hidden}
        for path in list(hidden_folders):
            while path:
                path = os.path.dirname(path)
                hidden_folders.add(path)

        def link(relative, folder):
            if relative and relative not in hidden_folders:
                os.symlink(os.path.join(root, relative), os.path.join(folder, relative))
                return
            if relative:
                os.mkdir(os.path.join(folder, relative))
            prefix = relative + os.sep if relative else ""
            children = {p[len(prefix) :].split(os.sep)[0] for p in shown if p.startswith(prefix)}
            for child in sorted(children - {"__pycache__"}):
                link(os.path.join(relative, child), folder)

        folder = os.path.join(destination, f"site{index}")
        os.makedirs(folder)
        link("", folder)
        folders.append(folder)
    return folders


def _fresh_environment(venv: str, visible: str, preinstalled) -> None:
    """A virtual environment (no system site-packages) that sees, of this one, only the
    ``preinstalled`` distributions (torch, torchvision, detectron2 and what they require: fvcore,
    pycocotools, iopath, numpy, the nvidia-* libraries ...), through links under ``visible`` listed in
    a .pth file: an environment "that already has torch and detectron2", in which pip counts those as
    installed and does not fetch them.

    Python 3.11's venv brings setuptools 65, which would hide torch's own (torch needs >= 77) and make
    pip install another one: removed, as in an environment where torch was installed."""
    python = os.path.join(venv, "bin", "python")
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, capture_output=True, timeout=300)
    subprocess.run(
        [python, "-m", "pip", "uninstall", "-y", "-q", "setuptools"],
        check=True, capture_output=True, timeout=300, env=_clean_environment(),
    )
    folders = _link_distributions(preinstalled, visible)
    site_packages = subprocess.run(
        [python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True, timeout=60,
    ).stdout.strip()
    with open(os.path.join(site_packages, "_preinstalled.pth"), "w") as f:
        f.write("".join(folder + "\n" for folder in folders))


def _probe(python: str, distributions, modules, cwd: str) -> dict:
    """Where ``python -I`` finds ``distributions`` (metadata) and ``modules`` (None: not found)."""
    result = subprocess.run(
        [python, "-I", "-c", _PROBE, json.dumps(sorted(distributions)), json.dumps(sorted(modules))],
        cwd=cwd, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def _clean_environment() -> dict:
    """This process's environment without what would show another environment's packages to the
    fresh one or send pip's install elsewhere."""
    dropped = {"PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PIP_TARGET", "PIP_PREFIX", "PIP_USER"}
    return {k: v for k, v in os.environ.items() if k not in dropped | {"PIP_NO_DEPS"}}


@pytest.mark.slow
def test_pip_install_into_an_environment_with_torch_and_detectron2_brings_the_rest(tmp_path):
    """The issue's promise, live: ``pip install .`` into a fresh environment that has only torch,
    torchvision and detectron2 (and what they require) installs the other dependencies (timm,
    safetensors, huggingface_hub, ...; none is importable there before), and the installed package
    then builds and runs a detector there, from a folder outside the checkout. A module the package
    imports whose distribution pyproject.toml does not declare fails this test, naming it."""
    import importlib.metadata

    pytest.importorskip("ensurepip", reason="venv needs ensurepip to give the fresh environment a pip")
    venv, visible, source, work = (str(tmp_path / n) for n in ("venv", "visible", "source", "work"))
    python = os.path.join(venv, "bin", "python")
    os.mkdir(work)
    closure = _requirement_closure(_PREINSTALLED)
    # What pip must bring: the declared distributions the environment lacks, their modules, and the
    # modules the package imports that the environment lacks, declared or not (those of the optional
    # dependencies excepted, such as onnxruntime). The test shows something only if timm and its
    # weight-file libraries are among them.
    brought = sorted(_declared_distributions(extras=False) - set(closure))
    optional = _declared_distributions() - _declared_distributions(extras=False)
    providers = importlib.metadata.packages_distributions()
    providers = {m: {_normalized(d) for d in ds} for m, ds in providers.items()}
    modules = {m for m, ds in providers.items() if m.isidentifier() and ds & set(brought)}
    modules |= {m for m in _third_party_imports() if not providers.get(m, set()) & (set(closure) | optional)}
    assert {"timm", "safetensors", "huggingface_hub"} <= modules, (sorted(modules), sorted(closure))

    _fresh_environment(venv, visible, closure.values())
    before = _probe(python, list(brought) + list(_PREINSTALLED), modules, work)
    for name in _PREINSTALLED:
        assert (before["distributions"][name] or "").startswith(visible + os.sep), f"no {name} in {venv}"
    present = {d: p for d, p in before["distributions"].items() if d in brought and p}
    present.update({m: p for m, p in before["modules"].items() if p})
    assert not present, f"the fresh environment already has packages pip is to bring: {present}"

    _copy_sources(source)  # pip builds in the source folder; keep the checkout clean
    install = subprocess.run(
        [python, "-m", "pip", "install", source],
        cwd=work, capture_output=True, text=True, timeout=600, env=_clean_environment(),
    )
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    shutil.rmtree(source)  # nothing of the sources is left to import from but the installed copy

    after = _probe(python, list(brought) + list(_PREINSTALLED), modules, work)
    site_packages = after["site_packages"] + os.sep
    missing = [m for m in sorted(modules) if not (after["modules"][m] or "").startswith(site_packages)]
    assert not missing, f"modules pip did not install (not in pyproject.toml's dependencies?): {missing}"
    missing = [d for d in brought if after["distributions"][d] != after["site_packages"]]
    assert not missing, f"declared dependencies pip did not install into {site_packages}: {missing}"
    again = {d: after["distributions"][d] for d in _PREINSTALLED}
    again = {d: p for d, p in again.items() if not p.startswith(visible + os.sep)}
    assert not again, f"pip installed again what the environment had: {again}"

    result = subprocess.run(
        [python, "-I", "-c", _DRIVER, after["site_packages"], work],
        cwd=work, capture_output=True, text=True, timeout=600, env=_clean_environment(),
    )
    not_found = [line for line in result.stderr.splitlines() if "ModuleNotFoundError" in line]
    assert result.returncode == 0, (
        f"the installed package fails in the fresh environment ({not_found or 'see below'}; a dependency "
        f"missing from pyproject.toml's dependencies?):\n{result.stderr[-4000:]}"
    )
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["rsb_backbone"] == os.path.join(after["site_packages"], "rsb_backbone", "__init__.py")
    assert seen["image_size"] == [72, 100] and seen["num_detections"] > 0
    # Every module came from the fresh environment: its site-packages, the linked-in preinstalled
    # distributions, or the standard library; none from this environment's site-packages or the checkout.
    this_site = {os.path.normpath(str(d.locate_file(""))) for d in closure.values()}
    elsewhere = tuple(folder + os.sep for folder in this_site | {REPO_ROOT})
    strays = [f for f in seen["module_files"] if f.startswith(elsewhere)]
    assert not strays, strays[:20]
    # The backbone is timm's: the detector ran on the copies pip brought.
    for module in ("timm", "safetensors", "huggingface_hub"):
        init = os.path.join(after["site_packages"], module, "__init__.py")
        assert init in seen["module_files"], f"{module} was not imported from {site_packages}"
