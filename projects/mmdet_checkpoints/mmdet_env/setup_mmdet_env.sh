#!/usr/bin/env bash
# A separate venv with mmdetection 2.28.2 and mmcv 1.7.2 for the parity check (docs/mmdet_parity.md).
# It sees the main environment's packages (torch 2.14, detectron2, opencv), also when that
# environment is a venv or conda env, but installs nothing into it.
#
#   bash projects/mmdet_checkpoints/mmdet_env/setup_mmdet_env.sh [VENV_DIR]   # default /tmp/mmenv
#
# mmcv-full has no wheels for torch 2.14 on PyPI and its sdist does not compile against torch 2.14
# (-std=c++17 vs the C++20 torch requires); so mmcv 1.7.2 is installed as pure Python
# (MMCV_WITH_OPS=0) and only the two ops the four detectors use are compiled from its own
# sources (build_mmcv_ops.py). Compiling runs under nice with one job.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV="${1:-/tmp/mmenv}"
WORK="${MMDET_ENV_WORK:-/tmp/mm}"
mkdir -p "$WORK"

# The main environment: the python3 on PATH (or $PYTHON), which may itself be a venv or a conda
# env. --system-site-packages only shows the packages of the interpreter that venv is based on,
# so the main environment's site-packages folders are added to the new venv with a .pth file
# (site.addsitedir also runs their own .pth files: editable installs, namespace packages).
MAIN_PYTHON="${PYTHON:-python3}"
"$MAIN_PYTHON" -m venv --system-site-packages "$VENV"
PIP="$VENV/bin/pip"
"$MAIN_PYTHON" - "$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" <<'PY'
import site, sys, sysconfig
folders = [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"], *site.getsitepackages()]
lines = [f"import site; site.addsitedir({folder!r})" for folder in dict.fromkeys(folders)]
with open(f"{sys.argv[1]}/main_environment.pth", "w") as pth:
    pth.write("\n".join(lines) + "\n")
print("mmdetection venv sees:", *dict.fromkeys(folders))
PY
# Build-time needs of the sdist (setuptools < 81 keeps pkg_resources), mmcv/mmdet runtime deps.
"$PIP" install "setuptools<81" wheel addict "yapf==0.40.1" terminaltables
"$PIP" download --no-deps --no-build-isolation -d "$WORK" mmcv-full==1.7.2 mmdet==2.28.2
tar xzf "$WORK/mmcv-full-1.7.2.tar.gz" -C "$WORK"
MMCV_WITH_OPS=0 "$PIP" install --no-deps --no-build-isolation "$WORK/mmcv-full-1.7.2"
"$PIP" install --no-deps "$WORK/mmdet-2.28.2-py3-none-any.whl"
(cd "$WORK" && MAX_JOBS=1 nice -n 19 "$VENV/bin/python" "$HERE/build_mmcv_ops.py" "$WORK/mmcv-full-1.7.2")
"$VENV/bin/python" -c "import mmdet, mmcv.ops; print('mmdet', mmdet.__version__, 'mmcv', mmcv.__version__, 'ready')"
