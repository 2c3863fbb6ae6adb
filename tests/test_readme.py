"""The README's Python snippets must keep working, each one on its own."""

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def test_each_readme_python_block_runs_on_its_own():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 4, "README lost its quick start"
    namespaces = []
    for block in blocks:
        namespace: dict = {}  # a fresh namespace: a block may not lean on an earlier one
        exec(compile(block, str(README), "exec"), namespace)
        namespaces.append(namespace)
    # The first two calls are causal self-attention (dense, then local): the first query
    # sees only key 0, so its output is value 0.
    for namespace in namespaces[:2]:
        q, v, out = namespace["q"], namespace["v"], namespace["out"]
        assert out.shape == q.shape
        np.testing.assert_allclose(out[:, 0], v[:, 0], atol=1e-5)
    assert namespaces[2]["y"].shape == namespaces[2]["x"].shape
