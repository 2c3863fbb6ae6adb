"""Attention cores: defaults that run, option checks, names = functions = cores, the shared
rng policy, full decoding caches, and the generic per-step upkeep."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import effjax.attention as ea
from effjax.attention import registry
from effjax.layers import LocalCore, MultiHeadAttention, cores

B, T, D = 1, 8, 8
CACHED = ("dense", "local", "performer", "linear", "persistent_memory")  # with a decoding cache


@pytest.fixture(scope="module")
def x():
    return jax.random.normal(jax.random.key(0), (B, T, D))


def layer(attention, **kwargs):
    return MultiHeadAttention(num_heads=2, attention=attention, **kwargs)


WITH_CORE = [n for n in ea.available() if registry.variant(n).core is not None]


@pytest.mark.parametrize("name", WITH_CORE)
def test_every_variant_with_a_core_runs_with_no_options(x, name):
    for is_causal in (False, True):
        lay = layer(name, is_causal=is_causal)
        if name == "linformer" and is_causal:
            with pytest.raises(ValueError, match="causal"):
                lay.init(jax.random.key(1), x)
            continue
        # One compiled program per call pattern: eager dispatch of a core's many small ops
        # costs more than compiling it.
        variables = jax.jit(lay.init)(jax.random.key(1), x)
        apply = jax.jit(lay.apply)
        out = apply(variables, x)
        assert np.isfinite(out).all() and not np.allclose(out, 0.0)
        if is_causal:  # the first output row sees only the first token
            changed = x.at[:, 1:].set(5.0)
            np.testing.assert_allclose(apply(variables, changed)[:, 0], out[:, 0], atol=1e-5)
        else:  # padded keys change nothing: rewrite their content, real rows stay
            real = jnp.arange(x.shape[1]) < x.shape[1] - 3
            padding = jnp.broadcast_to(real, x.shape[:2])
            padded = apply(variables, x, padding_mask=padding)
            moved = apply(variables, x.at[:, ~real].set(5.0), padding_mask=padding)
            np.testing.assert_allclose(moved[:, real], padded[:, real], atol=1e-5)
        grads = jax.grad(
            lambda p, apply=apply, v=variables: jnp.sum(apply({**v, "params": p}, x) ** 2)
        )(variables["params"])
        assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_a_bad_option_is_a_one_line_error_at_construction():
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['window'\].*valid options: wi"):
        layer("local", attention_options={"window": 3})
    with pytest.raises(ValueError, match=r"unknown attention 'nosuch'; registered: .*local"):
        layer("nosuch")
    with pytest.raises(ValueError, match="window_size must be an int >= 0"):
        layer("local", attention_options={"window_size": -1})
    with pytest.raises(ValueError, match="give its options to the core"):
        layer(LocalCore(window_size=2), attention_options={"dilation": 2})


@pytest.mark.parametrize("name", ["lsh", "performer", "block_sparse"])
def test_a_registered_function_behaves_exactly_like_its_name(x, name):
    by_name = layer(name)
    by_fn = layer(ea.get(name))
    variables = jax.jit(by_name.init)(jax.random.key(1), x)
    by_fn_variables = jax.eval_shape(by_fn.init, jax.random.key(1), x)
    assert jax.tree.structure(variables) == jax.tree.structure(by_fn_variables)
    np.testing.assert_array_equal(
        jax.jit(by_fn.apply)(variables, x), jax.jit(by_name.apply)(variables, x)
    )


def test_a_core_instance_equals_its_name_with_options(x):
    by_core = layer(LocalCore(window_size=1), is_causal=True)
    by_name = layer("local", attention_options={"window_size": 1}, is_causal=True)
    variables = jax.jit(by_name.init)(jax.random.key(1), x)
    out = jax.jit(by_name.apply)(variables, x)
    np.testing.assert_array_equal(jax.jit(by_core.apply)(variables, x), out)
    assert not np.allclose(out, jax.jit(layer("dense").apply)(variables, x))


@pytest.mark.parametrize(
    ("name", "options"),
    [
        ("lsh", {"num_hashes": 1, "num_buckets": 4, "chunk_size": 2}),
        ("block_sparse", {"block_size": 1, "num_random_blocks": 1, "num_global_blocks": 1}),
    ],
)
def test_one_rng_policy_for_every_randomised_core(x, name, options):
    lay = layer(name, attention_options=options)
    variables = lay.init(jax.random.key(1), x)

    def run(lay, deterministic, seed=0):
        rngs = {"attention": jax.random.key(seed)}
        return lay.apply(variables, x, deterministic=deterministic, rngs=rngs)

    # Training draws from the "attention" stream; evaluation is fixed.
    assert not np.allclose(run(lay, False, 1), run(lay, False, 2))
    np.testing.assert_array_equal(run(lay, True, 1), run(lay, True, 2))
    # A user-given rng is used as it is, in training and in evaluation alike.
    given = lay.clone(attention_options={**options, "rng": jax.random.key(7)})
    np.testing.assert_array_equal(run(given, False, 1), run(given, True))
    assert not np.allclose(run(given, True), run(lay, True))


@pytest.mark.parametrize("name", CACHED)
def test_a_full_decoding_cache_fails_loudly(x, name):
    lay = layer(name, is_causal=True, decode=True)
    variables = jax.jit(lay.init)(jax.random.key(1), x[:, :4])  # a cache for 4 tokens
    step = jax.jit(lambda v, tok: lay.apply(v, tok, mutable=["cache"]))
    for t in range(4):
        out, mutated = step(variables, x[:, t : t + 1])
        variables = {**variables, **mutated}
        assert np.isfinite(out).all()
    out, _ = step(variables, x[:, 4:5])
    assert np.isnan(out).all()  # the poison value, never a silently wrong number


def test_upkeep_redraws_performer_features_on_schedule_but_never_after_the_last_step(x):
    lay = layer("performer", attention_options={"num_features": 4, "redraw_interval": 2})
    collections = {k: v for k, v in lay.init(jax.random.key(1), x).items() if k != "params"}
    old = collections["random_features"]["core"]["features"]
    upkeep = jax.jit(cores.upkeep, static_argnames="num_steps")

    def features(step, num_steps):
        after = upkeep(collections, rng=jax.random.key(3), step=step, num_steps=num_steps)
        return after["random_features"]["core"]["features"]

    np.testing.assert_array_equal(features(1, 10), old)  # not due
    assert not np.allclose(features(2, 10), old)  # due
    np.testing.assert_array_equal(features(4, 4), old)  # due, but the last step
    assert not np.allclose(features(4, None), old)  # no known end: due


def test_variables_saved_before_the_cores_load_through_the_remap(x):
    lay = layer("performer", attention_options={"num_features": 4})
    template = lay.init(jax.random.key(1), x)
    features = jax.random.normal(jax.random.key(2), (4, 4))
    params = {k: v for k, v in template["params"].items()}
    # The pre-cores layout: the features sat in the layer's own scope, with no schedule.
    legacy = {"params": params, "random_features": {"features": features}}
    variables = cores.remap_legacy_variables(legacy, template)
    assert variables["random_features"]["core"]["features"] is features
    assert variables["random_features"]["core"]["redraw_interval"] == 1000  # from the template
    explicit = layer("performer", attention_options={"features": features})
    np.testing.assert_allclose(
        lay.apply(variables, x), explicit.apply({"params": params}, x), atol=1e-6
    )

    lin = layer("linformer", attention_options={"proj_dim": 2, "sharing": "key_value"})
    template = lin.init(jax.random.key(1), x)
    proj = template["params"]["core"]["proj"] + 1.0
    legacy = {"params": {**{k: v for k, v in template["params"].items() if k != "core"},
                         "proj": proj}}  # fmt: skip
    assert cores.remap_legacy_variables(legacy, template)["params"]["core"]["proj"] is proj
    with pytest.raises(ValueError, match=r"legacy variable params/proj has shape \(2, 9\)"):
        bad = {"params": {**legacy["params"], "proj": jnp.zeros((2, 9))}}
        cores.remap_legacy_variables(bad, template)
    with pytest.raises(ValueError, match=r"no place in the model: \['params/stray'\]"):
        cores.remap_legacy_variables({"params": {**legacy["params"], "stray": 1.0}}, template)
