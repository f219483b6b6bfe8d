#!/usr/bin/env bash
# Installs everything RSB-Detectron2 needs into the current python3 (or $PYTHON):
# requirements.txt, upstream detectron2 (skipped when it already imports; building it takes
# several minutes) and this project in editable mode.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
grep -v '^detectron2 ' requirements.txt >"$requirements"
"$python" -m pip install -q -r "$requirements"

if "$python" -c "import detectron2" 2>/dev/null; then
    echo "detectron2 is already importable: not reinstalling it"
else
    echo "Building detectron2 from its pinned git commit (several minutes)..."
    "$python" -m pip install -q --no-build-isolation "$(grep '^detectron2 ' requirements.txt)"
fi
"$python" -m pip install -q --no-deps --no-build-isolation -e .
"$python" -c "import rsb_backbone, detectron2, torch; print('rsb_backbone', rsb_backbone.__version__, '| detectron2', detectron2.__version__, '| torch', torch.__version__)"
