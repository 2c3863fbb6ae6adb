"""Contract checks shared by every attention variant: empty sequences, static options."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effjax.attention as ea
from effjax.bench import suite

RNG = jax.random.key(0)

# Options of every built-in variant for 4-dim heads; "self" = only T == S is defined.
VARIANTS = {
    "dense": ({}, False),
    "local": ({"window_size": 2}, False),
    "global_local": ({"window_size": 2, "global_mask": None}, True),
    "block_sparse": ({"rng": RNG, "block_size": 4}, True),
    "lsh": ({"rng": RNG, "num_hashes": 2, "num_buckets": 4, "chunk_size": 4}, False),
    "performer": ({"features": ea.make_performer_features(RNG, 8, 4)}, False),
    "linear": ({}, False),
    "linformer": ({"proj_k": None, "proj_v": None}, False),
}


def call(name, q_len, kv_len, is_causal):
    options, _ = VARIANTS[name]
    options = dict(options)
    if "global_mask" in options:
        options["global_mask"] = jnp.zeros((2, q_len), bool)
    if "proj_k" in options:
        options["proj_k"] = options["proj_v"] = jnp.ones((3, kv_len))
    q = jnp.ones((2, q_len, 4, 4), jnp.bfloat16)
    kv = jnp.ones((2, kv_len, 2, 4), jnp.bfloat16)
    return ea.get(name)(q, kv, kv, is_causal=is_causal, **options)


@pytest.mark.parametrize(
    ("name", "is_causal"),
    [
        (name, causal)
        for name in VARIANTS
        for causal in (False, True)
        if name != "linformer" or not causal
    ],
)
def test_an_empty_sequence_gives_an_empty_result(name, is_causal):
    out = call(name, 0, 0, is_causal)
    assert out.shape == (2, 0, 4, 4) and out.dtype == jnp.bfloat16


@pytest.mark.parametrize(
    "name", ["routing", "sinkhorn", "synthesizer", "persistent_memory", "gaussian"]
)
def test_an_empty_sequence_gives_an_empty_result_in_the_newer_families(name):
    # Benchmark options fit any length (centroids, sorting network, memory slots), except
    # the synthesizer's [T, T] logits, drawn here for T = 0.
    length = 0 if name == "synthesizer" else 8
    options = suite.spec_for(name).options(RNG, suite.Shape(2, length, 4, 4))
    q = jnp.ones((2, 0, 4, 4), jnp.bfloat16)
    out = ea.get(name)(q, q, q, **options)
    assert out.shape == (2, 0, 4, 4) and out.dtype == jnp.bfloat16


# Linformer is left out: a projection of no keys is not defined.
@pytest.mark.parametrize(
    "name", [n for n, (_, self_only) in VARIANTS.items() if not self_only and n != "linformer"]
)
def test_queries_without_keys_give_zeros(name):
    out = call(name, 3, 0, False)
    np.testing.assert_array_equal(out, np.zeros((2, 3, 4, 4)))


@pytest.mark.parametrize(
    ("fn", "option", "options"),
    [
        (ea.local_attention, "window_size", {}),
        (ea.block_sparse_attention, "block_size", {"rng": RNG}),
        (ea.lsh_attention, "chunk_size", {"rng": RNG, "num_hashes": 1, "num_buckets": 4}),
        (ea.lsh_attention, "num_buckets", {"rng": RNG, "num_hashes": 1, "chunk_size": 4}),
        (ea.linear_attention, "chunk_size", {"is_causal": True}),
    ],
)
def test_a_traced_static_option_asks_for_a_static_int(fn, option, options):
    q = jnp.ones((1, 8, 2, 4))
    with pytest.raises(ValueError, match=f"{option} must be a static Python int.*static_argnames"):
        jax.jit(lambda x: fn(q, q, q, **{option: x}, **options))(4)


def test_a_traced_global_bound_asks_for_a_static_int():
    q = jnp.ones((1, 8, 2, 4))
    g = jnp.zeros((1, 8), bool)
    with pytest.raises(ValueError, match="max_global_tokens must be a static Python int"):
        jax.jit(
            lambda m: ea.global_local_attention(
                q, q, q, window_size=2, global_mask=g, max_global_tokens=m
            )
        )(1)


BUILT_IN = [n for n in ea.available() if ea.get(n).__module__.startswith("effjax.attention")]


def test_every_built_in_variant_is_checked_for_a_traced_flag():
    # The parametrisation below is read off the registry: a new built-in is covered.
    assert {"dense", "local", "linear", "gaussian", "sinkhorn"} <= set(BUILT_IN)


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_traced_is_causal_asks_for_a_static_bool(name):
    options = suite.spec_for(name).options(RNG, suite.Shape(1, 8, 2, 4))
    q = jnp.ones((1, 8, 2, 4))
    message = r"is_causal must be a static Python bool.*static_argnames"
    with pytest.raises(ValueError, match=message):
        jax.jit(lambda c: ea.get(name)(q, q, q, is_causal=c, **options))(True)
