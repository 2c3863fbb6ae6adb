"""The README's quick start must keep working: its Python blocks run in order."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_blocks_run():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3, "README lost its quick start"
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    # The quick start's first call is causal self-attention: the first query sees only key 0.
    q, v, out = namespace["q"], namespace["v"], namespace["out"]
    assert out.shape == q.shape
    np.testing.assert_allclose(out[:, 0], v[:, 0], atol=1e-5)
    assert namespace["y"].shape == namespace["x"].shape
