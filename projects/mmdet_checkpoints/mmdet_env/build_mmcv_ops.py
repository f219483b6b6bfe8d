#!/usr/bin/env python3
"""Compile mmcv-full 1.7.2's nms and roi_align CPU ops into an installed pure-Python mmcv 1.7.2.

Why: mmcv-full 1.x does not build against torch 2.14 as released (its setup.py passes
``-std=c++17``; torch 2.14's headers require C++20), and building all ~75 of its op sources on
two CPU cores takes far longer than the parity check needs. mmdetection's Faster/Mask/Cascade
Mask R-CNN and RetinaNet call only two compiled ops at test time: ``nms`` (through
``batched_nms``) and ``roi_align_forward``. This script compiles exactly mmcv's own sources for
those two (``mmcv/ops/csrc/pytorch/{nms,roi_align}.cpp`` and ``cpu/{nms,roi_align}.cpp``, unmodified)
with C++20 plus ``mmcv_ops_min.cpp`` (their Python bindings), installs the result as
``mmcv/_ext_min*.so``, and writes ``mmcv/_ext.py`` that exposes them; any other op raises
NotImplementedError when called (mmcv's loader only checks that the names exist).

Usage (inside the parity venv, see setup_mmdet_env.sh):
    python build_mmcv_ops.py MMCV_SOURCE_DIR
"""

import argparse
import os
import shutil
import sys
import time

SHIM = '''"""mmcv._ext for the parity environment (written by build_mmcv_ops.py).

nms, roi_align_forward and roi_align_backward are mmcv's own C++ CPU implementations; every other
op of mmcv-full is absent and raises NotImplementedError when called.
"""
from mmcv._ext_min import nms, roi_align_backward, roi_align_forward  # noqa: F401


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)

    def unavailable(*args, **kwargs):
        raise NotImplementedError(f"mmcv op {name!r} is not compiled in this parity environment")

    return unavailable
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mmcv_source", help="unpacked mmcv-full-1.7.2 source tree")
    parser.add_argument(
        "--build-dir", default=None, help="where to compile (default: MMCV_SOURCE/build_ops_min)"
    )
    args = parser.parse_args()

    import mmcv
    from torch.utils.cpp_extension import load

    csrc = os.path.join(args.mmcv_source, "mmcv", "ops", "csrc")
    sources = [
        os.path.join(os.path.dirname(os.path.abspath(__file__)), "mmcv_ops_min.cpp"),
        os.path.join(csrc, "pytorch", "nms.cpp"),
        os.path.join(csrc, "pytorch", "cpu", "nms.cpp"),
        os.path.join(csrc, "pytorch", "roi_align.cpp"),
        os.path.join(csrc, "pytorch", "cpu", "roi_align.cpp"),
    ]
    for path in sources:
        if not os.path.isfile(path):
            print(f"build_mmcv_ops.py: error: {path} not found", file=sys.stderr)
            return 2
    build_dir = args.build_dir or os.path.join(args.mmcv_source, "build_ops_min")
    os.makedirs(build_dir, exist_ok=True)
    # pytorch/nms.cpp and pytorch/cpu/nms.cpp would both compile to nms.o: copy the CPU
    # kernels under new names (contents unchanged).
    for i, path in enumerate(sources):
        if os.sep + "cpu" + os.sep in path:
            renamed = os.path.join(build_dir, "cpu_" + os.path.basename(path))
            shutil.copyfile(path, renamed)
            sources[i] = renamed
    start = time.time()
    module = load(
        name="_ext_min",
        sources=sources,
        extra_include_paths=[os.path.join(csrc, "common")],
        extra_cflags=["-O2"],
        build_directory=build_dir,
        verbose=True,
    )
    print(f"compiled {len(sources)} sources in {time.time() - start:.0f} s")
    package_dir = os.path.dirname(mmcv.__file__)
    shutil.copy2(module.__file__, os.path.join(package_dir, os.path.basename(module.__file__)))
    with open(os.path.join(package_dir, "_ext.py"), "w") as f:
        f.write(SHIM)
    print(f"installed {os.path.basename(module.__file__)} and _ext.py into {package_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
