"""The project's configs by name, as ``detectron2.model_zoo`` gives Detectron2's (see the README)."""

from .model_zoo import configs_root, get_config, get_config_file

__all__ = ["configs_root", "get_config", "get_config_file"]
