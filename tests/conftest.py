"""Shared test helpers: small weight files in the formats users bring."""

import os
import subprocess
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # the configs package (configs/) for LazyConfig imports in tests
    sys.path.insert(0, REPO_ROOT)


def randomize_batchnorm(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial statistics and affine values (in place)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))


# Under pytest-xdist (pyproject.toml runs the suite on two workers), each worker and every process
# it starts uses one thread: two workers with torch's default of one thread per core would put
# twice as many busy threads as cores on the machine, and OpenMP's waiting threads then spin.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Fixtures made once per session and shared by several test files: the tests that use them form
# one xdist group each (``--dist loadgroup``), so that one worker makes them, and the other worker
# takes the rest. Each other test file is a group of its own (its module fixtures made once).
_SHARED_SESSION_GROUPS = (
    ("trained_checkpoints", {"trained_detectors", "quick_demo"}),
    ("slurm_clusters", {"slurm_cluster", "slurm_two_nodes"}),
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Mark each test with its xdist group and run the two long groups first (with
    ``--no-loadscope-reorder`` each worker starts with one of them)."""

    def group_of(item):
        for rank, (group, fixtures) in enumerate(_SHARED_SESSION_GROUPS):
            if fixtures & set(item.fixturenames):
                return rank, group
        return len(_SHARED_SESSION_GROUPS), item.nodeid.split("::")[0]

    ranked = {item.nodeid: group_of(item) for item in items}
    for item in items:
        item.add_marker(pytest.mark.xdist_group(ranked[item.nodeid][1]))
    items.sort(key=lambda item: ranked[item.nodeid][0])  # stable: file order within each rank


def pytest_report_header(config):
    """Name the temporary folder and its free space: trained checkpoints need a few GB there."""
    import shutil
    import tempfile

    folder = str(config.option.basetemp or tempfile.gettempdir())
    free_gb = shutil.disk_usage(folder if os.path.isdir(folder) else tempfile.gettempdir()).free / 2**30
    return f"temporary files under {folder}: {free_gb:.1f} GB free (the suite needs about 11 GB)"


class CreatesFileWhenUnpickled:
    """Pickles to a call of ``open(marker, "w")``: loading it unsafely creates the marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="session")
def timm_resnet50_state_dict():
    """A randomly initialized timm resnet50 state dict with non-trivial BatchNorm values."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("resnet50", pretrained=False)
    randomize_batchnorm(model)
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A small generated COCO-format data set with masks: 8 train and 4 val images."""
    from rsb_backbone.data.datasets.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("tiny_shapes") / "shapes"
    return generate_shapes_dataset(str(root), num_train=8, num_val=4, min_size=128, max_size=176, seed=1)


def _started_cluster(cluster_class, root_factory):
    """Start a test SLURM cluster of ``cluster_class`` (tests/slurm_cluster.py), or skip the test
    where it cannot run; under CI=true that is a failure. Yields the cluster, stops it after."""
    from slurm_cluster import missing_requirements

    reason = missing_requirements(cluster_class)
    cluster = None
    if reason is None:
        cluster = cluster_class(str(root_factory()))
        try:
            cluster.start()
        except (RuntimeError, OSError, subprocess.SubprocessError) as e:
            cluster.stop()
            reason = f"SLURM did not start: {e}"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and {reason}")
        pytest.skip(reason)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real one-node SLURM cluster for this test session (tests/slurm_cluster.py). Where it cannot
    be started the tests that use it skip, except under CI=true, where that is a failure."""
    from slurm_cluster import SlurmCluster

    yield from _started_cluster(SlurmCluster, lambda: tmp_path_factory.mktemp("slurm"))


@pytest.fixture(scope="session")
def slurm_two_nodes(tmp_path_factory):
    """A real two-node SLURM cluster, each node in network namespaces of its own, for this test
    session (tests/slurm_cluster.py); skips or fails as :func:`slurm_cluster`. Everything it
    creates (namespaces, links, daemons, job processes) is removed at the end."""
    from slurm_cluster import TwoNodeSlurmCluster

    yield from _started_cluster(TwoNodeSlurmCluster, lambda: tmp_path_factory.mktemp("slurm2"))


@pytest.fixture(scope="session")
def quick_demo(tmp_path_factory):
    """The README's quick CPU demo, run once per session as its command stands
    (tests/trained_detectors.py): a QuickDemo."""
    from trained_detectors import train_quick_demo

    return train_quick_demo(str(tmp_path_factory.mktemp("quick_demo")))


@pytest.fixture(scope="session")
def trained_detectors(tiny_shapes, quick_demo, tmp_path_factory):
    """The eight detectors, each trained once per session by train_net.py on ``tiny_shapes`` (the
    R-CNNs from the quick demo's weights) and the shapes detectors evaluated with ``--eval-only``
    (tests/trained_detectors.py): name -> TrainedDetector."""
    from trained_detectors import train_detectors

    return train_detectors(
        tiny_shapes, str(tmp_path_factory.mktemp("trained_detectors")), init_checkpoint=quick_demo.checkpoint
    )


@pytest.fixture
def small_filesystem(tmp_path):
    """A function ``(size_mib) -> folder`` mounting a tmpfs of that size (a full disk on demand);
    unmounted at the end. Needs root and mount rights: the test skips where that cannot be done,
    except under CI=true, where that is a failure."""
    mounted = []

    def mount(size_mib: int) -> str:
        folder = tmp_path / f"small_fs_{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            reason = f"cannot mount a {size_mib} MiB tmpfs: {result.stderr.strip() or 'mount failed'}"
            if os.environ.get("CI") == "true":
                pytest.fail(f"CI=true and {reason}")
            pytest.skip(reason)
        mounted.append(str(folder))
        return str(folder)

    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and not root: cannot mount a small file system")
        pytest.skip("not root: cannot mount a small file system")
    yield mount
    for folder in mounted:
        subprocess.run(["umount", "-l", folder], capture_output=True)


def fill_filesystem(folder: str, leave_bytes: int = 0) -> None:
    """Write a filler file in ``folder`` until at most ``leave_bytes`` are free on its file system."""
    import shutil

    free = shutil.disk_usage(folder).free - leave_bytes
    with open(os.path.join(folder, "filler"), "wb") as f:
        try:
            f.write(b"\0" * max(free, 0))
            f.flush()
        except OSError:  # ENOSPC: the file system is full, as wanted
            pass
