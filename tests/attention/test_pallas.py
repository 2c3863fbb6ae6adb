"""implementation="pallas": JAX's splash-attention kernels, run here in Pallas interpret mode."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax import testing
from effjax.attention import (
    block_sparse,
    block_sparse_attention,
    block_sparse_mask,
    dense,
    dot_product_attention,
    global_local,
    global_local_attention,
    global_local_mask,
    local,
    local_attention,
    local_mask,
    masks,
    pallas_attention,
)

jit_pallas = jax.jit(
    pallas_attention,
    static_argnames=("is_causal", "scale", "window_size", "block_q", "block_kv", "interpret"),
)

# (T, S, K, causal, window, padded) with N = 4. Splash tiles are 128 wide: T or S above 128
# spans two tiles; T != S checks the bottom-right offset; T > S causal leaves early queries
# with no key; random padding leaves some rows with no key inside their window.
SLOW = pytest.mark.slow
CASES = [
    (20, 140, 1, True, None, True),
    (24, 24, 2, False, (3, 2), True),
    pytest.param(16, 16, 4, False, None, False, marks=SLOW),
    pytest.param(140, 20, 2, True, None, False, marks=SLOW),
    pytest.param(30, 30, 2, True, 4, False, marks=SLOW),
]


@pytest.mark.parametrize(("t", "s", "k", "is_causal", "window", "padded"), CASES)
def test_interpret_mode_equals_dense_forward_and_gradients(rng, t, s, k, is_causal, window, padded):
    q, kk, v = testing.random_qkv(rng, batch=2, q_len=t, kv_len=s, num_heads=4, num_kv_heads=k)
    testing.check_against_reference(
        jit_pallas,
        q,
        kk,
        v,
        mask=None if window is None else local_mask(t, s, window, is_causal=is_causal),
        padding_mask=testing.random_padding_mask(jax.random.key(3), 2, s) if padded else None,
        is_causal=is_causal,
        window_size=window,
        atol=2e-5,
    )


def test_a_sequence_with_no_key_gives_zeros(rng):
    q, k, v = testing.random_qkv(rng, batch=2, q_len=8, num_heads=2)
    padding = jnp.array([[True] * 8, [False] * 8])
    out = jit_pallas(q, k, v, padding_mask=padding)
    np.testing.assert_array_equal(out[1], 0.0)
    assert np.abs(np.asarray(out[0])).min() > 0


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"block_kv": 64}, "block_kv"),
        ({"block_q": 0}, "block_q"),
        ({"window_size": -1}, "window_size"),
        ({"padding_mask": jnp.ones((2, 5), bool)}, "padding_mask"),
    ],
)
def test_bad_arguments_raise(rng, kwargs, name):
    q, k, v = testing.random_qkv(rng, q_len=8)
    with pytest.raises(ValueError, match=name):
        pallas_attention(q, k, v, **kwargs)


def test_value_head_dim_must_match_key(rng):
    q, k, _ = testing.random_qkv(rng, q_len=8)
    with pytest.raises(ValueError, match="head dims"):
        pallas_attention(q, k, jnp.ones((*k.shape[:3], 3)))


# Every variant with a kernel path: implementation="pallas" equals the XLA reference with
# the variant's dense mask, forward and gradients. One shape for all (T = 40, N = 4, K = 2,
# padded keys), so the interpret-mode kernels stay few and small.
T, N, K = 40, 4, 2
BIGBIRD = {"block_size": 8, "num_random_blocks": 1, "num_global_blocks": 1}
GLOBAL_MASK = np.zeros((2, T), bool)
GLOBAL_MASK[0, [0, 17]] = True
GLOBAL_MASK[1, 5] = True


def _local(is_causal):
    window = (5, 3)
    return (
        functools.partial(local_attention, window_size=window),
        local_mask(T, T, window, is_causal=is_causal),
    )


def _global_local(is_causal):
    window = 4
    return (
        functools.partial(
            global_local_attention, window_size=window, global_mask=GLOBAL_MASK, max_global_tokens=2
        ),
        global_local_mask(jnp.asarray(GLOBAL_MASK), window),
    )


def _block_sparse(is_causal, per_head=False):
    key = jax.random.key(7)
    mask = block_sparse_mask(
        T, rng=key, is_causal=is_causal, num_heads=N if per_head else None,
        num_kv_heads=K if per_head else None, **BIGBIRD,
    )  # fmt: skip
    fn = functools.partial(block_sparse_attention, rng=key, per_head=per_head, **BIGBIRD)
    return fn, mask


MAPPED = [
    pytest.param(_local, True, {}, id="local-causal"),
    pytest.param(_global_local, False, {}, id="global_local"),
    pytest.param(_block_sparse, False, {"per_head": True}, id="block_sparse-per_head"),
    pytest.param(_block_sparse, True, {}, id="block_sparse-causal"),
    pytest.param(_local, False, {}, id="local", marks=SLOW),
]


@pytest.mark.parametrize(("pattern", "is_causal", "extra"), MAPPED)
def test_variants_on_pallas_equal_their_dense_mask(rng, pattern, is_causal, extra):
    fn, mask = pattern(is_causal, **extra)
    q, k, v = testing.random_qkv(rng, batch=2, q_len=T, num_heads=N, num_kv_heads=K)
    testing.check_against_reference(
        functools.partial(fn, implementation="pallas"),
        q,
        k,
        v,
        mask=mask,
        padding_mask=testing.random_padding_mask(jax.random.key(3), 2, T),
        is_causal=is_causal,
        atol=2e-5,
    )


def test_block_pattern_is_the_reference_mask():
    # The splash kernel reads BlockPattern; the reference expands the same block mask.
    key, tb = jax.random.key(7), -(-T // BIGBIRD["block_size"])
    for causal in (False, True):
        (blocks,) = block_sparse.static_block_mask(key, tb, 1, 1, causal, 1)
        pattern = masks.BlockPattern(blocks, BIGBIRD["block_size"], (T, T), is_causal=causal)
        want = block_sparse_mask(T, rng=key, is_causal=causal, **BIGBIRD)
        if causal:
            want = want & masks.causal_mask(T, T)
        np.testing.assert_array_equal(pattern[:, :], want)
        np.testing.assert_array_equal(pattern[8:16, 20:40], np.asarray(want)[8:16, 20:40])


def test_rows_with_no_key_give_zeros_on_pallas(rng):
    # Row 1's keys are all padding; row 0 has one real key, 17 (a Longformer global token):
    # most rows see no key (zeros), a few see only key 17.
    q, k, v = testing.random_qkv(rng, batch=2, q_len=T, num_heads=N, num_kv_heads=K)
    padding = np.zeros((2, T), bool)
    padding[0, 17] = True
    for pattern in (_local, _global_local, _block_sparse):
        fn, mask = pattern(False)
        out = fn(q, k, v, padding_mask=jnp.asarray(padding), implementation="pallas")
        want = dot_product_attention(q, k, v, mask=mask, padding_mask=jnp.asarray(padding))
        np.testing.assert_allclose(out, want, atol=2e-5)
        np.testing.assert_array_equal(out[1], 0.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda q: local_attention(q, q, q, window_size=2, implementation="cudnn"),
         r"local_attention: implementation must be one of \(None, 'xla', 'pallas'\)"),
        (lambda q: local_attention(q, q, q, window_size=2, dilation=2, implementation="pallas"),
         "dilation=2"),
        (lambda q: global_local_attention(q, q, q, window_size=2, global_mask=GLOBAL_MASK,
                                          is_causal=True, implementation="pallas"),
         "not causal"),
        (lambda q: jax.jit(lambda q, key: block_sparse_attention(
            q, q, q, rng=key, implementation="pallas", **BIGBIRD))(q, jax.random.key(0)),
         "concrete key"),
        (lambda q: block_sparse_attention(q, q, q, rng=jax.random.key(0),
                                          implementation="chunked"),
         "block_sparse_attention: implementation must be one of"),
    ],
)  # fmt: skip
def test_paths_a_variant_lacks_are_refused(rng, call, match):
    q, _, _ = testing.random_qkv(rng, batch=2, q_len=T, num_heads=N)
    with pytest.raises(ValueError, match=match):
        call(q)


# implementation=None: each family's selector, pure in (backend, facts), for every backend.
@pytest.mark.parametrize(
    ("module", "backend", "facts", "want"),
    [
        (local, "cpu", {}, "xla"),
        (local, "gpu", {"dtypes": ("bfloat16",)}, "xla"),  # no GPU kernel wired in
        (local, "tpu", {}, "pallas"),
        (local, "tpu", {"dtypes": ("bfloat16",)}, "pallas"),
        (local, "tpu", {"dilation": 2}, "xla"),
        (local, "tpu", {"dtypes": ("float16",)}, "xla"),
        (local, "tpu", {"dtypes": ("float32", "bfloat16", "float32")}, "xla"),
        (local, "tpu", {"same_head_dims": False}, "xla"),
        (global_local, "cpu", {}, "xla"),
        (global_local, "tpu", {}, "pallas"),
        (global_local, "tpu", {"is_causal": True}, "xla"),
        (global_local, "tpu", {"dilation": 3}, "xla"),
        (block_sparse, "gpu", {}, "xla"),
        (block_sparse, "tpu", {}, "pallas"),
        (block_sparse, "tpu", {"static_rng": False}, "xla"),
        (block_sparse, "tpu", {"same_head_dims": False}, "xla"),
    ],
)
def test_sparse_default_implementation_per_backend(module, backend, facts, want):
    assert module.default_implementation(backend, **facts) == want


def _none_cases():
    """(module whose default_implementation picks, call(implementation), args), T = 40."""
    q, k, v = testing.random_qkv(jax.random.key(0), batch=2, q_len=T, num_heads=N, num_kv_heads=K)
    long_kv = jnp.ones((2, 520, K, 8))  # more than one 512-key block: chunked on CPU
    fl, _ = _local(True)
    fg, _ = _global_local(False)
    fb, _ = _block_sparse(False)
    return [
        (dense, lambda impl, q, k, v: dot_product_attention(q, k, v, implementation=impl),
         (q, long_kv, long_kv)),
        (local, lambda impl, *qkv: fl(*qkv, is_causal=True, implementation=impl), (q, k, v)),
        (global_local, lambda impl, *qkv: fg(*qkv, implementation=impl), (q, k, v)),
        (block_sparse, lambda impl, *qkv: fb(*qkv, implementation=impl), (q, k, v)),
    ]  # fmt: skip


def test_implementation_none_runs_what_the_selector_picks(monkeypatch):
    # The program traced with None is the one traced with the selector's pick: on this
    # CPU the real pick, and any pick the selector is made to return.
    def program(call, impl, args):
        return str(jax.make_jaxpr(functools.partial(call, impl))(*args))

    for module, call, args in _none_cases():
        picked = {}
        real = module.default_implementation

        def spy(*a, _real=real, _picked=picked, **kw):
            _picked["cpu"] = _real(*a, **kw)
            return _picked.get("forced", _picked["cpu"])

        monkeypatch.setattr(module, "default_implementation", spy)
        assert program(call, None, args) == program(call, picked["cpu"], args)
        other = "xla" if picked["cpu"] != "xla" else "pallas"
        picked["forced"] = other
        assert program(call, None, args) == program(call, other, args)
        assert program(call, other, args) != program(call, picked["cpu"], args)
    monkeypatch.undo()
