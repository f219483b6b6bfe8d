"""The modules' earlier names, so that what users kept still loads: ``config.yaml`` files whose
``_target_`` names an earlier module path, and imports written against an earlier layout
(``rsb_backbone.deploy``, ``rsb_backbone.model_metadata``, ...). Importing an earlier name gives
the module that holds its contents now."""

import importlib
import importlib.abc
import importlib.util
import sys

# Earlier module name -> the module that holds its contents now.
MOVED_MODULES = {
    "rsb_backbone.timm_resnet": "rsb_backbone.modeling.backbone.timm_resnet",
    "rsb_backbone.norm_modes": "rsb_backbone.modeling.backbone.timm_resnet",
    "rsb_backbone.timm_weights": "rsb_backbone.modeling.backbone.timm_weights",
    "rsb_backbone.pixel_stats": "rsb_backbone.modeling.backbone.timm_weights",
    "rsb_backbone.fpn": "rsb_backbone.modeling.backbone.fpn",
    "rsb_backbone.yacs_builders": "rsb_backbone.modeling.backbone.fpn",
    "rsb_backbone.tensor_files": "rsb_backbone.checkpoint.tensor_files",
    "rsb_backbone.checkpoint_layouts": "rsb_backbone.checkpoint.checkpoint_layouts",
    "rsb_backbone.model_metadata": "rsb_backbone.checkpoint.model_metadata",
    "rsb_backbone.detector_checkpoint": "rsb_backbone.checkpoint.detection_checkpoint",
    "rsb_backbone.publishing": "rsb_backbone.checkpoint.publishing",
    "rsb_backbone.errors": "rsb_backbone.utils.errors",
    "rsb_backbone.cli": "rsb_backbone.utils.errors",
    "rsb_backbone.engine.atomic_checkpointer": "rsb_backbone.checkpoint.detection_checkpoint",
    "rsb_backbone.deploy": "rsb_backbone.export",
    "rsb_backbone.deploy.export": "rsb_backbone.export.exporter",
    "rsb_backbone.deploy.exported_model": "rsb_backbone.export.exported_model",
    "rsb_backbone.deploy.fold_norms": "rsb_backbone.modeling.fold_norms",
    "rsb_backbone.config.file_kind": "rsb_backbone.config.files",
    "rsb_backbone.config.devices": "rsb_backbone.config.run_settings",
    "rsb_backbone.config.detector_heads": "rsb_backbone.config.run_settings",
}


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an earlier module name and loads it as the module that holds its contents now."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self, is_package=fullname == "rsb_backbone.deploy")

    def create_module(self, spec):
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module):
        pass  # the module it stands for is already executed


def install() -> None:
    """Let the earlier module names import (once per process)."""
    if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())  # before finders that would find a stale file
