"""The package's layout keeps its promises: imports only go down (no cycle between modules, no two
subpackages importing each other, nothing imported from projects/), the library never names the
entry point, configs are data, and what earlier runs saved still loads after modules moved."""

import ast
import os
import subprocess
import sys
from collections import defaultdict

import pytest
import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.utils.registry import locate

from conftest import REPO_ROOT

PACKAGE_DIR = os.path.join(REPO_ROOT, "rsb_backbone")
SAVED_CONFIGS = os.path.join(REPO_ROOT, "tests", "data", "configs_saved_before_layout")


def _package_modules():
    """Module name -> file, for every module of rsb_backbone."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
                modules[module.removesuffix(".__init__")] = path
    return modules


def _top_level_imports(module, path):
    """The modules that ``module`` imports when it is loaded (not inside functions)."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _import_graph():
    modules = _package_modules()
    return modules, {m: {t for t in _top_level_imports(m, p) if t in modules and t != m} for m, p in modules.items()}


def _cycles(graph):
    """Every module that can reach itself."""
    def reachable(start):
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo.extend(graph[node])
        return seen

    return sorted(m for m in graph if m in reachable(m))


def test_no_module_imports_itself_through_others():
    _, graph = _import_graph()
    assert _cycles(graph) == []


def test_no_two_subpackages_import_each_other():
    _, graph = _import_graph()
    subpackage = lambda module: ".".join(module.split(".")[:2])  # noqa: E731
    uses = defaultdict(set)
    for module, targets in graph.items():
        for target in targets:
            if module.count(".") and target.count(".") and subpackage(module) != subpackage(target):
                uses[subpackage(module)].add(subpackage(target))
    assert uses["rsb_backbone.inference"].isdisjoint({"rsb_backbone.export"})  # inference does not export
    two_way = sorted((a, b) for a in uses for b in uses[a] if a in uses.get(b, ()) and a < b)
    assert two_way == []


def _python_files(*roots):
    for root in roots:
        if root.endswith(".py"):
            yield root
            continue
        for folder, _, files in os.walk(root):
            yield from (os.path.join(folder, f) for f in files if f.endswith(".py"))


def test_the_library_and_the_configs_neither_reach_into_projects_nor_edit_sys_path():
    offenders = []
    for path in _python_files(PACKAGE_DIR, os.path.join(REPO_ROOT, "configs"), os.path.join(REPO_ROOT, "train_net.py")):
        source = open(path).read()
        tree = ast.parse(source)
        names = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        names += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        if any(name.split(".")[0] == "projects" for name in names) or "sys.path" in source:
            offenders.append(os.path.relpath(path, REPO_ROOT))
    assert offenders == []


def test_no_library_module_names_the_entry_point():
    named = [os.path.relpath(p, REPO_ROOT) for p in _python_files(PACKAGE_DIR) if "train_net.py" in open(p).read()]
    assert named == []


_LOAD_CONFIGS = """
import glob, json, os, sys
import rsb_backbone.data  # the builtin data sets, as train_net.py has them
from detectron2.config import LazyConfig
from detectron2.data import DatasetCatalog
before, path_before = sorted(DatasetCatalog.list()), list(sys.path)
for config in sorted(glob.glob(os.path.join(sys.argv[1], "**", "*.py"), recursive=True)):
    if os.path.basename(config) != "__init__.py":
        LazyConfig.load(config)
added = [p for p in sys.path if p not in path_before]  # setuptools may add its _vendor folder
print(json.dumps([sorted(DatasetCatalog.list()) == before, [p for p in added if "site-packages" not in p]]))
"""


@pytest.mark.slow
def test_loading_any_config_registers_nothing_and_leaves_sys_path_alone():
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_CONFIGS, os.path.join(REPO_ROOT, "configs")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[true, []]"


@pytest.mark.parametrize("saved", sorted(os.listdir(SAVED_CONFIGS)))
def test_a_config_saved_before_the_modules_moved_still_builds_its_model(saved):
    cfg = LazyConfig.load(os.path.join(SAVED_CONFIGS, saved))
    cfg.model.backbone.bottom_up.weights = None  # offline; the architecture is what is checked
    cfg.model.backbone.bottom_up.model_name = "resnet18"
    model = instantiate(cfg.model)
    assert type(model.backbone.bottom_up).__name__ == "TimmResNet"
    with torch.no_grad():
        model.eval()
        outputs = model([{"image": torch.zeros(3, 64, 96), "height": 64, "width": 96}])
    assert "instances" in outputs[0]


@pytest.mark.parametrize(
    "earlier, now",
    [
        ("rsb_backbone.timm_resnet.TimmResNet", "rsb_backbone.modeling.backbone.timm_resnet.TimmResNet"),
        ("rsb_backbone.norm_modes.FROZEN_STATS_BN", "rsb_backbone.modeling.backbone.timm_resnet.FROZEN_STATS_BN"),
        ("rsb_backbone.fpn.RetinaNetP6P7", "rsb_backbone.modeling.backbone.fpn.RetinaNetP6P7"),
        ("rsb_backbone.yacs_builders.add_rsb_config", "rsb_backbone.modeling.backbone.fpn.add_rsb_config"),
        ("rsb_backbone.pixel_stats.pixel_normalization", "rsb_backbone.modeling.backbone.timm_weights.pixel_normalization"),
        ("rsb_backbone.deploy.ExportedDetector", "rsb_backbone.export.exported_model.ExportedDetector"),
        ("rsb_backbone.deploy.fold_norms.to_deployment_form", "rsb_backbone.modeling.fold_norms.to_deployment_form"),
        ("rsb_backbone.model_metadata.read_model_metadata", "rsb_backbone.checkpoint.model_metadata.read_model_metadata"),
        ("rsb_backbone.publishing.publish_checkpoint", "rsb_backbone.checkpoint.publishing.publish_checkpoint"),
        ("rsb_backbone.engine.atomic_checkpointer.AtomicCheckpointer", "rsb_backbone.checkpoint.AtomicCheckpointer"),
        ("rsb_backbone.errors.UserInputError", "rsb_backbone.utils.errors.UserInputError"),
    ],
)
def test_earlier_module_names_still_import(earlier, now):
    assert locate(earlier) is locate(now) is not None
