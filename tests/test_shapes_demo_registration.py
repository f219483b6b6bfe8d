"""Where the shapes demo's data sets are registered: by ``import rsb_backbone.data`` (as importing
``detectron2.data`` registers Detectron2's builtin sets), never by ``import rsb_backbone`` alone
or by a config file itself; registering writes nothing and needs no OpenCV."""

import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

# Prints what a fresh interpreter holds after the statements given as argv[1].
_PROBE = """
import json, sys
exec(sys.argv[1])
from detectron2.data import DatasetCatalog, MetadataCatalog
import rsb_backbone
names = sorted(n for n in DatasetCatalog.list() if n.startswith("rsb_shapes_"))
print(json.dumps({
    "rsb_backbone": rsb_backbone.__file__,
    "cv2": repr(sys.modules.get("cv2", "absent")),
    "names": names,
    "json_files": [MetadataCatalog.get(n).json_file for n in names],
}))
"""


def _probe(statements: str, tmp_path, **env) -> dict:
    """Run ``statements`` in a fresh interpreter on this checkout; return what :data:`_PROBE` saw."""
    result = subprocess.run(
        [sys.executable, "-c", _PROBE, statements],
        cwd=REPO_ROOT,
        env={**os.environ, "PYTHONPATH": REPO_ROOT, "RSB_DATASETS": str(tmp_path / "datasets"), **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["rsb_backbone"] == os.path.join(REPO_ROOT, "rsb_backbone", "__init__.py")
    return seen


def test_importing_the_package_registers_no_data_set_and_needs_no_opencv(tmp_path):
    # Detectron2 itself imports OpenCV when it is imported, unless DETECTRON2_DISABLE_CV2=1: then
    # any `import cv2` raises ImportError, so this fails if a module of the package imports it.
    seen = _probe("import rsb_backbone", tmp_path, DETECTRON2_DISABLE_CV2="1")
    assert seen["cv2"] == "None"  # blocked by Detectron2's switch, never loaded
    assert seen["names"] == []


def test_the_data_package_registers_the_builtin_shapes_sets_writing_nothing(tmp_path):
    seen = _probe("import rsb_backbone.data", tmp_path, DETECTRON2_DISABLE_CV2="1")
    assert seen["cv2"] == "None"
    assert seen["names"] == ["rsb_shapes_train", "rsb_shapes_val"]
    shapes_root = os.path.join(str(tmp_path), "datasets", "shapes")  # $RSB_DATASETS/shapes
    assert seen["json_files"] == [os.path.join(shapes_root, f"{s}.json") for s in ("train", "val")]
    assert not os.path.exists(shapes_root)  # registering writes nothing


def test_a_shapes_config_finds_the_sets_through_the_package_it_imports(tmp_path):
    config = os.path.join(REPO_ROOT, "configs", "shapes", "faster_rcnn_rsb_r18_fpn_shapes_quick.py")
    seen = _probe(f"from detectron2.config import LazyConfig; LazyConfig.load({config!r})", tmp_path)
    assert seen["names"] == ["rsb_shapes_train", "rsb_shapes_val"]
    assert not os.path.exists(os.path.join(str(tmp_path), "datasets"))
