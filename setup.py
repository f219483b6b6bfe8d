"""Packaging of RSB-Detectron2; the metadata is in pyproject.toml.

The repository's ``configs/`` folder becomes the package ``rsb_backbone.model_zoo.configs`` of
an installed copy, with its folder structure intact (the LazyConfigs import their siblings
relatively), as Detectron2 ships its configs in ``detectron2.model_zoo``. A source checkout
keeps using ``configs/`` where it is; :mod:`rsb_backbone.model_zoo` finds either.
"""

from setuptools import find_packages, setup

CONFIGS_PACKAGE = "rsb_backbone.model_zoo.configs"
# Relative to configs/: the LazyConfigs (with their __init__.py) and the yacs YAML files.
CONFIG_FILES = ["*/*.py", "yacs/*.yaml", "yacs/*/*.yaml"]

setup(
    packages=find_packages(include=["rsb_backbone", "rsb_backbone.*"]) + [CONFIGS_PACKAGE],
    package_dir={CONFIGS_PACKAGE: "configs"},
    package_data={CONFIGS_PACKAGE: CONFIG_FILES},
)
