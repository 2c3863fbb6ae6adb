"""The cores of routing, sinkhorn, synthesizer, persistent_memory and gaussian attention:
each equals its pure function on the core's own variables, and the routing centroids move
by the k-means moving average through the generic upkeep."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax import attention as ea
from effjax import testing
from effjax.layers import cores
from effjax.layers.cores import (
    ROUTING_CENTROIDS,
    GaussianCore,
    PersistentMemoryCore,
    RoutingCore,
    SinkhornCore,
    SynthesizerCore,
)

Q, K, V = testing.random_qkv(jax.random.key(0), batch=2, q_len=8, num_heads=2, head_dim=4)
PADDING = jnp.arange(8)[None, :] < jnp.array([[8], [6]])


def run(core, **kwargs):
    variables = jax.jit(core.init)(jax.random.key(1), Q, K, V)
    apply = jax.jit(
        lambda variables: core.apply(variables, Q, K, V, padding_mask=PADDING, **kwargs)
    )
    return variables, apply(variables)


def test_routing_centroids_follow_the_moving_average_through_upkeep():
    core = RoutingCore(local_heads=0, num_clusters=3, decay=0.5)
    variables = core.init(jax.random.key(1), Q, K, V)
    state = variables[ROUTING_CENTROIDS]
    assert state["centroids"].shape == (2, 3, 4) and "params" not in variables
    out, mutated = core.apply(
        variables, Q, K, V, padding_mask=PADDING, deterministic=False, mutable=[ROUTING_CENTROIDS]
    )
    want_out = ea.routing_attention(Q, K, V, centroids=state["centroids"], padding_mask=PADDING)
    np.testing.assert_allclose(out, want_out, atol=1e-6)
    after = cores.upkeep(mutated, rng=jax.random.key(2), step=1)[ROUTING_CENTROIDS]
    valid = jnp.concatenate([PADDING, PADDING], axis=1)
    want = ea.update_centroids(
        state["centroids"], jnp.concatenate([Q, K], axis=1), decay=0.5, valid=valid
    )
    np.testing.assert_allclose(after["centroids"], want, atol=1e-6)
    assert not np.allclose(after["centroids"], state["centroids"])
    np.testing.assert_array_equal(after["counts"], 0.0)
    # Evaluation gathers nothing: the statistics stay empty.
    _, mutated = core.apply(variables, Q, K, V, mutable=[ROUTING_CENTROIDS])
    np.testing.assert_array_equal(mutated[ROUTING_CENTROIDS]["counts"], 0.0)


def test_routing_mixes_local_heads():
    core = RoutingCore(local_heads=1, num_clusters=2, local_window=2)
    variables, out = run(core, is_causal=True)
    mu = variables[ROUTING_CENTROIDS]["centroids"]

    @jax.jit
    def want(mu):
        local = ea.local_attention(Q[:, :, :1], K[:, :, :1], V[:, :, :1], window_size=(2, 0),
                                   padding_mask=PADDING, is_causal=True)  # fmt: skip
        routed = ea.routing_attention(Q[:, :, 1:], K[:, :, 1:], V[:, :, 1:], centroids=mu,
                                      padding_mask=PADDING, is_causal=True)  # fmt: skip
        return jnp.concatenate([local, routed], axis=2)

    np.testing.assert_allclose(out, want(mu), atol=1e-6)


def test_sinkhorn_sorting_network_by_hand():
    core = SinkhornCore(block_size=3, max_len=12)
    variables, out = run(core, is_causal=True)
    p = variables["params"]
    assert p["sort_w2"].shape == (2, 4, 4)  # K, F = H, ceil(12 / 3) blocks
    # Causal summaries: block i reads the mean real key of blocks < i.
    real = np.asarray(PADDING, np.float64)
    k = np.asarray(K, np.float64)
    summaries = np.zeros((2, 2, 3, 4))
    for i in range(1, 3):
        w = real[:, : 3 * i]
        summaries[:, :, i] = np.einsum("bl,blkh->bkh", w, k[:, : 3 * i]) / w.sum(1)[:, None, None]
    hidden = np.maximum(np.einsum("bknh,khf->bknf", summaries, p["sort_w1"]), 0)
    logits = jnp.asarray(np.einsum("bknf,kfm->bknm", hidden, p["sort_w2"])[..., :3], jnp.float32)
    want = ea.sinkhorn_attention(Q, K, V, block_size=3, sort_logits=logits, padding_mask=PADDING,
                                 is_causal=True)  # fmt: skip
    np.testing.assert_allclose(out, want, atol=1e-5)


@pytest.mark.parametrize(
    ("options", "shapes"),
    [
        ({"kind": "dense", "max_len": 10}, {"w1": (2, 4, 4), "w2": (2, 4, 10)}),
        ({"kind": "factorized_dense", "max_len": 10}, {"wa": (2, 4, 4), "wb": (2, 4, 3)}),
        ({"kind": "factorized_random", "rank": 2, "mixture": True}, {"r1": (2, 8, 2), "alpha": ()}),
    ],
)
def test_synthesizer_parameters_per_kind(options, shapes):
    variables, out = run(SynthesizerCore(**options), is_causal=True)
    for name, shape in shapes.items():
        assert variables["params"][name].shape == shape
    assert np.isfinite(out).all()


def test_fixed_random_synthesizer_is_a_non_trainable_table():
    variables, out = run(SynthesizerCore(kind="random", trainable=False, max_len=10))
    table = variables["synthesizer"]["table"]
    assert table.shape == (2, 10, 10) and "params" not in variables
    logits = ea.random_synthesizer_logits(table, q_len=8, kv_len=8)
    want = ea.synthesizer_attention(Q, K, V, synthetic_logits=logits, padding_mask=PADDING)
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_persistent_memory_and_gaussian_cores_equal_their_functions():
    variables, out = run(PersistentMemoryCore(num_slots=3), is_causal=True)
    p = variables["params"]
    want = ea.persistent_memory_attention(Q, K, V, memory_key=p["memory_key"],
        memory_value=p["memory_value"], padding_mask=PADDING, is_causal=True)  # fmt: skip
    np.testing.assert_allclose(out, want, atol=1e-6)
    variables, out = run(GaussianCore(widths=[1.0, 2.0]))
    assert not variables
    want = ea.gaussian_attention(Q, K, V, widths=(1.0, 2.0), padding_mask=PADDING)
    np.testing.assert_allclose(out, want, atol=1e-6)


def test_bad_options_fail_at_construction():
    with pytest.raises(ValueError, match="kind must be one of"):
        SynthesizerCore.from_options({"kind": "nope"})
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\)"):
        RoutingCore.from_options({"decay": 1.0})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SinkhornCore.from_options({"temperature": 0.0})
    with pytest.raises(ValueError, match="leaves no routing head"):
        RoutingCore(local_heads=2).init(jax.random.key(0), Q, K, V)


# ------------------------------------------------------------------ decoding

#: The family's cores with a decoding cache: the synthesizer's two paths (logits from the
#: token, factorized; table rows by position, with the dot-product mixture), sinkhorn over
#: six blocks, routing with its default window w = ceil(L / C) and local heads.
DECODED = {
    "synthesizer-factorized_dense": ("synthesizer", {"kind": "factorized_dense"}),
    "synthesizer-random-mixture": ("synthesizer", {"kind": "random", "mixture": True}),
    "sinkhorn": ("sinkhorn", {"block_size": 2}),
    "routing": ("routing", {"num_clusters": 3, "local_window": 2}),
}


@pytest.mark.parametrize("variant", DECODED)
def test_ragged_decoding_equals_each_row_alone_in_a_full_causal_pass(variant):
    """Left-padded prompts of 2, 4 and 3 tokens, then two steps of 4 tokens, against the
    full causal pass of each row alone (left-aligned, over the cache's length L = 12);
    one more step overflows the cache: NaN."""
    from effjax.layers import MultiHeadAttention

    name, options = DECODED[variant]
    batch, length, width, lengths = 3, 12, 4, np.array([2, 4, 3])
    x = jax.random.normal(jax.random.key(0), (batch, length, 16))
    layer = MultiHeadAttention(
        num_heads=4, num_kv_heads=2, is_causal=True, attention=name, attention_options=options
    )
    variables = jax.jit(layer.init)(jax.random.key(1), x)
    full = jax.jit(layer.apply)(variables, x)
    decoder = layer.clone(decode=True)
    cache = jax.jit(decoder.init)(jax.random.key(1), x)["cache"]
    step = jax.jit(
        lambda cache, x, mask: decoder.apply(
            {**variables, "cache": cache}, x, padding_mask=mask, mutable=["cache"]
        )
    )
    # Pad tokens (a large value) must change nothing.
    prompt = jnp.stack([jnp.pad(x[b, :n], ((width - n, 0), (0, 0)), constant_values=9.0)
                        for b, n in enumerate(lengths)])  # fmt: skip
    out, mutated = step(cache, prompt, jnp.arange(width)[None, :] >= width - lengths[:, None])
    got = [out[b, width - n :] for b, n in enumerate(lengths)]
    real = jnp.ones((batch, width), bool)
    index = lengths[:, None] + np.arange(width)[None, :]
    for _ in range(2):
        out, mutated = step(mutated["cache"], x[np.arange(batch)[:, None], index], real)
        got = [jnp.concatenate([g, out[b]]) for b, g in enumerate(got)]
        index = index + width
    for b, n in enumerate(lengths):
        np.testing.assert_allclose(got[b], full[b, : n + 2 * width], atol=1e-5)
    out, _ = step(mutated["cache"], x[:, :width], real)
    assert np.isnan(out).all()  # a full cache: the poison value
