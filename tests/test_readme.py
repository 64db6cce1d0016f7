"""The README's usage example runs as written."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_usage_example_runs():
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    loss, feats = namespace["loss"], namespace["feats"]
    assert loss.ndim == 0 and feats.grad is not None and feats.grad.abs().sum() > 0
    assert namespace["phi_rf"].shape == (4, 1, 128, 2)
