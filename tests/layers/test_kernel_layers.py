import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.attention import linformer_attention
from effjax.layers import RANDOM_FEATURES, MultiHeadAttention, redraw_performer_features

B, T, D = 2, 10, 16


@pytest.fixture
def x():
    return jax.random.normal(jax.random.key(0), (B, T, D))


def performer_layer(**kwargs):
    options = {"num_features": 24}
    return MultiHeadAttention(
        num_heads=4, num_kv_heads=2, attention="performer", attention_options=options, **kwargs
    )


def test_performer_features_are_non_trainable_and_used_deterministically(x):
    layer = performer_layer()
    variables = layer.init(jax.random.key(1), x)
    features = variables[RANDOM_FEATURES]["core"]["features"]
    assert features.shape == (24, 4)
    assert "features" not in variables["params"]
    out = layer.apply(variables, x)
    np.testing.assert_array_equal(layer.apply(variables, x), out)  # evaluation is deterministic
    # The layer uses exactly its stored features: same as passing them explicitly.
    explicit = MultiHeadAttention(
        num_heads=4, num_kv_heads=2, attention="performer", attention_options={"features": features}
    )
    np.testing.assert_allclose(explicit.apply({"params": variables["params"]}, x), out, atol=1e-6)
    with pytest.raises(ValueError, match="random_features"):
        layer.apply({"params": variables["params"]}, x)


def test_redraw_replaces_features_only_every_interval(x):
    layer = performer_layer()
    variables = layer.init(jax.random.key(1), x)
    old = variables[RANDOM_FEATURES]["core"]["features"]
    redraw = jax.jit(redraw_performer_features, static_argnums=3)
    base = jax.random.key(2)
    for step in (0, 1, 99):
        same = redraw(variables, base, step, 100)
        np.testing.assert_array_equal(same[RANDOM_FEATURES]["core"]["features"], old)
    new_100 = redraw(variables, base, 100, 100)[RANDOM_FEATURES]["core"]["features"]
    new_200 = redraw(variables, base, 200, 100)[RANDOM_FEATURES]["core"]["features"]
    assert not np.allclose(new_100, old) and not np.allclose(new_200, new_100)
    # Redrawn features are block-orthogonal like the initial ones.
    gram = new_100[:4] @ new_100[:4].T
    np.testing.assert_allclose(gram - jnp.diag(jnp.diag(gram)), 0.0, atol=1e-4)
    core_features = {**variables[RANDOM_FEATURES]["core"], "features": new_100}
    redrawn = {**variables, RANDOM_FEATURES: {"core": core_features}}
    assert not np.allclose(layer.apply(redrawn, x), layer.apply(variables, x))
    with pytest.raises(ValueError, match="redraw_interval must be a positive int"):
        redraw_performer_features(variables, base, 1, 0)


@pytest.mark.parametrize("attention", ["performer", "linear"])
def test_recurrent_decoding_equals_full_causal_pass(x, attention):
    layer = performer_layer(is_causal=True)
    if attention == "linear":
        layer = layer.clone(attention=attention, attention_options={})
    variables = layer.init(jax.random.key(1), x)
    full = layer.apply(variables, x)

    decoder = layer.clone(decode=True)
    cache = decoder.init(jax.random.key(1), x)["cache"]
    assert (
        cache["core"]["kv"].shape[0] == B and cache["core"]["kv"].shape[1] == 2
    )  # [B, K, F, Hv], no T axis
    step = jax.jit(
        lambda cache, tok: decoder.apply({**variables, "cache": cache}, tok, mutable=["cache"])
    )
    outs = []
    for t in range(T):
        out, mutated = step(cache, x[:, t : t + 1])
        cache = mutated["cache"]
        outs.append(out)
    np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5)


def linformer_layer(sharing, **options):
    options = {"proj_dim": 4, "max_len": 16, "sharing": sharing, **options}
    return MultiHeadAttention(
        num_heads=4, num_kv_heads=2, attention="linformer", attention_options=options
    )


@pytest.mark.parametrize(
    ("sharing", "shapes"),
    [
        ("none", {"proj_k": (2, 4, 16), "proj_v": (2, 4, 16)}),
        ("headwise", {"proj_k": (4, 16), "proj_v": (4, 16)}),
        ("key_value", {"proj": (4, 16)}),
    ],
)
def test_linformer_layer_owns_projections_and_uses_leading_columns(x, sharing, shapes):
    layer = linformer_layer(sharing)
    variables = layer.init(jax.random.key(1), x)  # T = 10 < max_len = 16
    params = variables["params"]
    got_shapes = {name: params["core"][name].shape for name in shapes}
    assert got_shapes == shapes

    def project(p, inp):
        return jnp.einsum("btd,dnh->btnh", inp, p["kernel"]) + p["bias"][None, None]

    core = params["core"]
    proj_k = core.get("proj_k", core.get("proj"))[..., :T]
    proj_v = core.get("proj_v", core.get("proj"))[..., :T]
    o = linformer_attention(
        project(params["query"], x),
        project(params["key"], x),
        project(params["value"], x),
        proj_k=proj_k,
        proj_v=proj_v,
    )
    out_params = params["out"]
    want = jnp.einsum("btnh,nhd->btd", o, out_params["kernel"]) + out_params["bias"][None, None]
    np.testing.assert_allclose(layer.apply(variables, x), want, atol=1e-5)
    with pytest.raises(ValueError, match="S=20 exceeds max_len=16"):
        layer.apply(variables, jnp.ones((1, 20, D)))


def test_linformer_layerwise_sharing_uses_one_projection_for_all_layers(x):
    class TwoLayers(nn.Module):
        @nn.compact
        def __call__(self, h):
            shared = self.param("shared_projection", nn.initializers.normal(0.3), (4, 16))
            options = {"sharing": "layerwise", "projection": shared}
            for _ in range(2):
                h = h + MultiHeadAttention(
                    num_heads=2, attention="linformer", attention_options=options
                )(h)
            return h

    model = TwoLayers()
    params = jax.jit(model.init)(jax.random.key(1), x)["params"]
    layer_params = [p for name, p in params.items() if name.startswith("MultiHeadAttention")]
    assert len(layer_params) == 2
    assert all("core" not in p for p in layer_params)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x) ** 2)))(params)

    # The shared gradient is the sum of what each layer contributes: perturb one layer's copy.
    def loss_with_two_copies(p0, p1):
        h = x
        for i, proj in enumerate((p0, p1)):
            layer = MultiHeadAttention(
                num_heads=2,
                attention="linformer",
                attention_options={"sharing": "layerwise", "projection": proj},
            )
            h = h + layer.apply({"params": params[f"MultiHeadAttention_{i}"]}, h)
        return jnp.sum(h**2)

    g0, g1 = jax.jit(jax.grad(loss_with_two_copies, argnums=(0, 1)))(
        params["shared_projection"], params["shared_projection"]
    )
    np.testing.assert_allclose(grads["shared_projection"], g0 + g1, rtol=1e-4, atol=1e-5)


def test_linformer_layer_bad_options_raise(x):
    with pytest.raises(ValueError, match="sharing must be one of"):
        linformer_layer("per_token").init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="proj_dim must be a positive int"):
        MultiHeadAttention(num_heads=2, attention="linformer", attention_options={"proj_dim": 0})
    # Without max_len the projections span the length seen at init.
    layer = MultiHeadAttention(num_heads=2, attention="linformer", attention_options={})
    assert layer.init(jax.random.key(0), x)["params"]["core"]["proj_k"].shape == (256, T)
    with pytest.raises(ValueError, match="attention_options\\['projection'\\]"):
        linformer_layer("layerwise").init(jax.random.key(0), x)
