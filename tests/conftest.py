"""Shared test settings: hypothesis profiles, helpers and markers."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

import pdcr_ext

settings.register_profile(
    "default",
    max_examples=int(os.environ.get("PDCR_HYPOTHESIS_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,  # CI reruns see the same cases; set PDCR_HYPOTHESIS_RANDOM=1 to explore
)
settings.register_profile("random", parent=settings.get_profile("default"), derandomize=False)
settings.load_profile("random" if os.environ.get("PDCR_HYPOTHESIS_RANDOM") else "default")

HAS_CUDA = torch.cuda.is_available() and pdcr_ext.has_cuda_kernels

requires_native = pytest.mark.skipif(not pdcr_ext.native_available, reason="extension not built")


# Import names of the optional packages (pyproject's "seg" extra and the data readers): a test
# module that needs a missing one is reported as skipped, naming it, instead of stopping the whole
# collection (a GPU image without MONAI must still run test_cuda.py). `make test` installs them
# all, so nothing is skipped there.
OPTIONAL_PACKAGES = {"monai", "yaml", "PIL", "scipy", "tifffile", "nibabel", "matplotlib", "skimage",
                     "pydicom", "tqdm"}


@pytest.hookimpl(tryfirst=True)
def pytest_make_collect_report(collector):
    if not isinstance(collector, pytest.Module):
        return None
    try:
        collector.obj  # imports the module; pytest's own collection then reuses it
    except pytest.Collector.CollectError as error:
        missing = getattr(error.__cause__, "name", None) or ""
        if isinstance(error.__cause__, ModuleNotFoundError) and missing.split(".")[0] in OPTIONAL_PACKAGES:
            reason = f"needs {missing.split('.')[0]!r}, which is not installed (pip install -e .[seg])"
            return pytest.CollectReport(collector.nodeid, "skipped", (str(collector.path), 0, reason), [])
    return None  # pytest's own collection (and its report of any other error)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "native_raises: makes (or could make) a native op raise a C++ exception; such "
        "exceptions crashed the process on one GPU image, so gpu_check.sh runs each of these "
        "tests in a process of its own")


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device and the CUDA kernels")
    for item in items:
        if item.get_closest_marker("cuda") is not None and not HAS_CUDA:  # the marker, not a folder named cuda
            item.add_marker(skip_cuda)


@pytest.fixture
def one_thread():
    """One torch thread for tests of small models: on the 2-core machine a second thread only
    adds contention (MONAI's tiny affine matmuls and small convolutions crawl when threads fight)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def cpu_isa():
    """Restores the CPU kernels' instruction set after a test that changes it."""
    from pdcr_ext import _C

    before = _C.cpu_isa()
    yield _C
    _C.set_cpu_isa(before)
