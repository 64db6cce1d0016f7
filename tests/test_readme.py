"""Every Python block of the README runs as written, each in a fresh namespace."""

import re
from pathlib import Path

import pytest

from conftest import OPTIONAL_PACKAGES

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_block_runs(index):
    namespace = {}
    try:
        exec(compile(BLOCKS[index], f"{README}:block{index}", "exec"), namespace)
    except ModuleNotFoundError as error:  # e.g. the MONAI example where MONAI is not installed
        if (error.name or "").split(".")[0] in OPTIONAL_PACKAGES:
            pytest.skip(f"needs {error.name!r}, which is not installed")
        raise
    if "feats" in namespace and "phi_rf" in namespace:  # the first example: the functional API
        assert namespace["loss"].ndim == 0 and namespace["feats"].grad.abs().sum() > 0
        assert namespace["phi_rf"].shape == (4, 1, 128, 2)
    if "handle" in namespace:  # the attach example: trained one step, then removed
        assert set(namespace["handle"].terms) == {"down_1", "down_2", "down_3", "down_1~down_2"}
        assert not hasattr(namespace["model"], "pdcr_plugin")
