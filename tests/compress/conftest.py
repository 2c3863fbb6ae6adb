"""Test data for the compression tests, drawn with numpy.

jax.random's threefry kernels take seconds to compile per shape on a busy CPU, and
these tests only need fixed arbitrary numbers, so they come from numpy's generator.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def _normal(shape, seed=0, scale=1.0):
    values = np.random.default_rng(seed).standard_normal(shape) * scale
    return jnp.asarray(values, jnp.float32)


@pytest.fixture
def normal():
    """``normal(shape, seed=0, scale=1.0)``: a float32 standard-normal array."""
    return _normal


@pytest.fixture
def random_init():
    """``random_init(module, *inputs, seed=0, scale=0.3)``: params shaped like ``module.init``'s."""

    def init(module, *inputs, seed=0, scale=0.3):
        shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)["params"]
        leaves, treedef = jax.tree_util.tree_flatten(shapes)
        return jax.tree_util.tree_unflatten(
            treedef, [_normal(s.shape, seed + i, scale) for i, s in enumerate(leaves)]
        )

    return init
