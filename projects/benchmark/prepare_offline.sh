#!/usr/bin/env bash
# Fills a folder (default .whl/, git-ignored) with what run_on_gpu.sh installs on a GPU machine that
# has PyTorch, torchvision, numpy and OpenCV but no internet: wheels of the other packages at the
# versions installed here, for the target's Python, and detectron2's Python package without its _C
# (projects/benchmark/README.md). Usage: bash projects/benchmark/prepare_offline.sh [DEST];
# PYTHON_VERSION=3.11 for another target than 3.12.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=${1:-.whl}
python=${PYTHON:-python3}
target_python=${PYTHON_VERSION:-3.12}
mkdir -p "$dest"

version() { "$python" -c "import importlib.metadata as m; print(m.version('$1'))"; }
pinned() { for name in "$@"; do echo "$name==$(version "$name")"; done; }

# Wheels on PyPI (pycocotools is compiled: one for the target's Python and platform).
# setuptools: detectron2's model_zoo imports pkg_resources, which setuptools 81 removed.
"$python" -m pip download -q --no-deps --only-binary=:all: --dest "$dest" \
    --python-version "$target_python" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    $(pinned timm iopath omegaconf yacs termcolor pycocotools setuptools)
# Published as source only, pure Python: build universal wheels here.
"$python" -m pip wheel -q --no-deps --wheel-dir "$dest" $(pinned fvcore antlr4-python3-runtime)

# detectron2: the installed package (configs included), minus compiled and cached files.
site=$("$python" -c "import detectron2, os; print(os.path.dirname(os.path.dirname(detectron2.__file__)))")
tar -czhf "$dest/detectron2-$(version detectron2)-python.tar.gz" -C "$site" \
    --exclude='_C*.so' --exclude='__pycache__' detectron2
ls -l "$dest"
du -sh "$dest"
