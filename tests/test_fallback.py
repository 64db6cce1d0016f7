"""No silent fallback: without the native library, backend="auto" warns once and says why."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import pdcr_ext

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import sys, warnings
sys.modules["pdcr_ext._C"] = None  # the built library fails to import, as after a bad build
import torch, pdcr_ext
assert pdcr_ext.native_available is False and pdcr_ext.has_cuda_kernels is False
rows, phi = torch.randn(2, 5, 3), torch.rand(2, 1, 5, 2)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    for _ in range(3):
        pdcr_ext.dragsaw_loss(rows, phi)
    pdcr_ext.foreground_ratios(torch.zeros(1, 4, 4, dtype=torch.long), torch.tensor([[0, 0, 1, 1]]), 2)
messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
print(len(messages))
print(messages[0] if messages else "")
try:
    pdcr_ext.dragsaw_loss(rows, phi, backend="native")
except ValueError as error:
    print("native:", error)
"""


def test_missing_native_library_warns_once_with_the_reason():
    out = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, message, native = out.stdout.strip().splitlines()[-3:]
    assert count == "1"  # once, not at every call
    assert "pdcr_ext._C failed to import" in message and "reference" in message and "N x K" in message
    assert native.startswith("native: backend='native' is unavailable: the native library pdcr_ext._C failed")


def test_availability_flags_are_both_booleans():
    assert isinstance(pdcr_ext.native_available, bool) and isinstance(pdcr_ext.has_cuda_kernels, bool)


@pytest.mark.skipif(not pdcr_ext.native_available, reason="extension not built")
def test_a_device_without_kernels_is_named(monkeypatch):
    from pdcr_ext import _ops

    assert _ops.unavailable_reason(torch.device("cpu")) is None
    assert "device type 'xpu'" in _ops.unavailable_reason(torch.device("xpu"))
    if not pdcr_ext.has_cuda_kernels:
        assert "without its CUDA kernels" in _ops.unavailable_reason(torch.device("cuda"))
