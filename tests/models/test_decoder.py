import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import effjax.attention as ea
from effjax.attention import registry
from effjax.layers import DenseCore, ReversibleStack
from effjax.models import DecoderConfig, DecoderLM, generate, next_token_loss
from effjax.models import decoder as decoder_module

B, P, NEW = 2, 4, 6


def cfg(**changes):
    base = dict(
        vocab_size=40, hidden_size=16, num_layers=1, num_heads=4, num_kv_heads=2,
        intermediate_size=32, max_position_embeddings=16, initializer_range=0.5,
    )  # fmt: skip
    return DecoderConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def lm():
    model = DecoderLM(cfg())
    prompt = jax.random.randint(jax.random.key(0), (B, P), 0, 40)
    params = jax.jit(model.init)(jax.random.key(1), prompt)["params"]
    return model, params, prompt


def greedy_without_cache(model, variables, prompt, steps):
    """Recomputes every position each step; one fixed-length buffer, since causal logits at
    position t ignore the (zero) tokens after t."""
    apply = jax.jit(model.apply)
    seq = jnp.zeros((prompt.shape[0], prompt.shape[1] + steps), prompt.dtype)
    seq = seq.at[:, : prompt.shape[1]].set(prompt)
    for t in range(prompt.shape[1], seq.shape[1]):
        seq = seq.at[:, t].set(jnp.argmax(apply(variables, seq)[:, t - 1], axis=-1))
    return seq


def test_greedy_generation_equals_recomputing_the_full_sequence(lm):
    model, params, prompt = lm
    got = generate(model, {"params": params}, prompt, max_new_tokens=NEW)
    want = greedy_without_cache(model, {"params": params}, prompt, NEW)
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(np.asarray(got[:, P:]))) > 2  # a non-trivial continuation


def test_cached_step_logits_equal_the_full_causal_pass(lm):
    model, params, _prompt = lm
    seq = jax.random.randint(jax.random.key(5), (B, 7), 0, 40)
    full = jax.jit(model.apply)({"params": params}, seq)
    decoder = model.clone(decode=True)
    cache = jax.jit(decoder.init)(jax.random.key(0), jnp.zeros((B, 7), jnp.int32))["cache"]
    step = jax.jit(
        lambda cache, tokens: decoder.apply(
            {"params": params, "cache": cache}, tokens, mutable=["cache"]
        )
    )
    logits, mutated = step(cache, seq[:, :3])
    steps = [logits]
    for t in range(3, 7):
        logits, mutated = step(mutated["cache"], seq[:, t : t + 1])
        steps.append(logits)
    np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-4)


def test_future_tokens_do_not_change_past_logits(lm):
    model, params, _prompt = lm
    seq = jax.random.randint(jax.random.key(6), (B, 8), 0, 40)
    changed = seq.at[:, 5:].set(0)
    apply = jax.jit(model.apply)
    np.testing.assert_allclose(
        apply({"params": params}, seq)[:, :5], apply({"params": params}, changed)[:, :5], atol=1e-5
    )


# ------------------------------------------------------------------ global tokens

GLOBAL_WINDOW = 2  # far shorter than the sequence: only global tokens reach back further


def _global_reference(query, key, value, *, global_mask, padding_mask=None, is_causal=False):
    """Dense attention under the mask global_local_attention equals (its contract)."""
    mask = ea.global_local_mask(global_mask, GLOBAL_WINDOW, is_causal=is_causal)
    return ea.dot_product_attention(
        query, key, value, mask=mask, padding_mask=padding_mask, is_causal=is_causal
    )


@pytest.fixture(scope="module")
def global_lm():
    options = {"window_size": GLOBAL_WINDOW, "max_global_tokens": 2}
    model = DecoderLM(cfg(num_layers=2, attention="global_local", attention_options=options))
    seq = jax.random.randint(jax.random.key(7), (B, 12), 0, 40)
    marks = np.zeros((B, 12), np.int32)
    marks[0, [1, 6]] = 1
    marks[1, [3]] = 1
    params = jax.jit(model.init)(jax.random.key(2), seq)["params"]
    return model, params, seq, marks


def test_global_attention_mask_reaches_every_layer_as_its_global_mask(global_lm):
    model, params, seq, marks = global_lm
    apply = jax.jit(model.apply)
    got = apply({"params": params}, seq, global_attention_mask=jnp.asarray(marks))
    reference = DecoderLM(model.config.replace(attention=_global_reference, attention_options={}))
    want = jax.jit(reference.apply)({"params": params}, seq, global_attention_mask=marks)
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The marks matter: without them late positions lose the view of the early tokens,
    # while position 0 (before any global token) sees the same one token.
    plain = apply({"params": params}, seq)
    assert float(jnp.abs(got[:, -1] - plain[:, -1]).max()) > 1e-3
    np.testing.assert_allclose(got[:, 0], plain[:, 0], atol=1e-5)


def test_causal_global_tokens_do_not_leak_future_tokens(global_lm):
    model, params, seq, marks = global_lm
    apply = jax.jit(model.apply)
    changed = seq.at[:, 7:].set(0)  # after every global token of both rows
    before = apply({"params": params}, seq, global_attention_mask=marks)
    after = apply({"params": params}, changed, global_attention_mask=marks)
    np.testing.assert_allclose(before[:, :7], after[:, :7], atol=1e-5)
    assert float(jnp.abs(before[:, 7:] - after[:, 7:]).max()) > 1e-3


def test_bad_global_attention_masks_raise(global_lm):
    model, params, seq, marks = global_lm
    with pytest.raises(ValueError, match=r"global_attention_mask shape \(2, 11\)"):
        model.apply({"params": params}, seq, global_attention_mask=marks[:, :11])
    reversible = DecoderLM(reversible_cfg())
    shapes = jax.eval_shape(reversible.init, jax.random.key(1), seq)["params"]  # never read
    with pytest.raises(ValueError, match="global_attention_mask needs a plain decoder stack"):
        reversible.apply({"params": shapes}, seq, global_attention_mask=marks)


def test_sampling_is_reproducible_and_top1_is_greedy(lm):
    model, params, prompt = lm
    key = jax.random.key(7)
    a = generate(model, {"params": params}, prompt, max_new_tokens=NEW, rng=key, temperature=2.0)
    b = generate(model, {"params": params}, prompt, max_new_tokens=NEW, rng=key, temperature=2.0)
    np.testing.assert_array_equal(a, b)
    c = generate(
        model,
        {"params": params},
        prompt,
        max_new_tokens=NEW,
        rng=jax.random.key(8),
        temperature=2.0,
    )
    assert not np.array_equal(a, c)
    top1 = generate(model, {"params": params}, prompt, max_new_tokens=NEW, rng=key, top_k=1)
    np.testing.assert_array_equal(
        top1, generate(model, {"params": params}, prompt, max_new_tokens=NEW)
    )


def test_untied_head_has_its_own_matrix():
    model = DecoderLM(cfg(tie_word_embeddings=False))
    ids = jnp.ones((1, 3), jnp.int32)
    params = jax.jit(model.init)(jax.random.key(0), ids)["params"]
    assert params["lm_head"]["kernel"].shape == (16, 40)
    apply = jax.jit(model.apply)
    assert not np.allclose(apply({"params": params}, ids), 0.0)
    zeroed = {**params, "lm_head": {"kernel": jnp.zeros((16, 40))}}
    np.testing.assert_array_equal(apply({"params": zeroed}, ids), 0.0)


def test_generation_with_a_registered_variant_and_its_core(lm, monkeypatch):
    model, params, prompt = lm
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    def my_dense(query, key, value, **kwargs):
        return ea.dot_product_attention(query, key, value, **kwargs)

    ea.register("test_decoder_dense", my_dense)
    variant = DecoderLM(model.config.replace(attention="test_decoder_dense"))
    with pytest.raises(ValueError, match="has no decoding cache"):
        generate(variant, {"params": params}, prompt, max_new_tokens=2)

    class MyDenseCore(DenseCore):  # dense's cache, the registered function
        function = staticmethod(my_dense)

    registry.attach("test_decoder_dense", core=MyDenseCore)
    # An array-valued option makes the model unhashable: generate compiles it uncached.
    default_scale = np.asarray(1 / np.sqrt(model.config.hidden_size // model.config.num_heads))
    variant = DecoderLM(variant.config.replace(attention_options={"scale": default_scale}))
    with pytest.raises(TypeError):
        hash(variant)
    np.testing.assert_array_equal(
        generate(variant, {"params": params}, prompt, max_new_tokens=NEW),
        generate(model, {"params": params}, prompt, max_new_tokens=NEW),
    )


def test_performer_generation_takes_all_collections_and_equals_greedy_reforward():
    model = DecoderLM(cfg(attention="performer", attention_options={"num_features": 8}))
    prompt = jax.random.randint(jax.random.key(0), (B, P), 0, 40)
    variables = jax.jit(model.init)(jax.random.key(1), prompt)
    assert "random_features" in variables
    got = generate(model, variables, prompt, max_new_tokens=NEW)
    np.testing.assert_array_equal(got, greedy_without_cache(model, variables, prompt, NEW))
    with pytest.raises(ValueError, match="random_features"):
        generate(model, {"params": variables["params"]}, prompt, max_new_tokens=2)
    with pytest.raises(ValueError, match="variables must be the model's variables"):
        generate(model, variables["params"], prompt, max_new_tokens=2)


def test_bad_generation_arguments_raise(lm):
    model, params, prompt = lm
    with pytest.raises(ValueError, match="17 tokens but the position table covers 16"):
        generate(model, {"params": params}, prompt, max_new_tokens=13)
    with pytest.raises(ValueError, match="max_new_tokens must be >= 1"):
        generate(model, {"params": params}, prompt, max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        generate(
            model,
            {"params": params},
            prompt,
            max_new_tokens=2,
            rng=jax.random.key(0),
            temperature=0.0,
        )
    with pytest.raises(ValueError, match=r"prompt_ids must be \[B, P\]"):
        generate(model, {"params": params}, prompt[0], max_new_tokens=2)


def test_chunked_feed_forward_gives_the_same_logits_and_generation(lm):
    model, params, prompt = lm
    chunked = DecoderLM(model.config.replace(ff_chunk_size=3))
    seq = jax.random.randint(jax.random.key(5), (B, 7), 0, 40)
    np.testing.assert_allclose(
        jax.jit(chunked.apply)({"params": params}, seq),
        jax.jit(model.apply)({"params": params}, seq),
        atol=1e-5,
    )
    np.testing.assert_array_equal(
        generate(chunked, {"params": params}, prompt, max_new_tokens=NEW),
        generate(model, {"params": params}, prompt, max_new_tokens=NEW),
    )


def reversible_cfg(**changes):
    return cfg(num_heads=2, num_kv_heads=None, num_layers=2, reversible=True, **changes)


def test_reversible_gradients_equal_plain_autodiff_of_the_same_stack(monkeypatch):
    """The custom backward pass (inputs rebuilt from outputs) gives autodiff's gradients,
    dropout included (the backward pass replays the forward's masks)."""
    model = DecoderLM(reversible_cfg(ff_chunk_size=3))
    seq = jax.random.randint(jax.random.key(5), (B, 7), 0, 40)
    params = jax.jit(model.init)(jax.random.key(1), seq)["params"]

    def grads(model):
        def loss(p):
            logits = model.apply(
                {"params": p}, seq, deterministic=False, rngs={"dropout": jax.random.key(2)}
            )
            return next_token_loss(logits, seq)

        return jax.jit(jax.grad(loss))(params)

    got = grads(model)
    monkeypatch.setattr(
        decoder_module, "ReversibleStack", functools.partial(ReversibleStack, reversible=False)
    )
    want = grads(DecoderLM(model.config))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, atol=1e-4)
    query_kernel = want["layers"]["layers"]["f"]["attention"]["query"]["kernel"]
    assert np.abs(np.asarray(query_kernel)).max() > 1e-3


def test_reversible_decoder_trains():
    model = DecoderLM(reversible_cfg(hidden_dropout_rate=0.0))
    seq = jax.random.randint(jax.random.key(5), (4, 12), 0, 40)
    params = jax.jit(model.init)(jax.random.key(1), seq)["params"]
    optimizer = optax.adam(3e-2)

    @jax.jit
    def step(params, state):
        loss, grads = jax.value_and_grad(
            lambda p: next_token_loss(model.apply({"params": p}, seq), seq)
        )(params)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss

    state = optimizer.init(params)
    losses = []
    for _ in range(30):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses


def test_reversible_refuses_decoding_padding_and_bad_sizes(lm):
    _model, _params, prompt = lm
    model = DecoderLM(reversible_cfg())
    params = jax.eval_shape(model.init, jax.random.key(1), prompt)["params"]  # never read
    with pytest.raises(ValueError, match="decode=True"):
        generate(model, {"params": params}, prompt, max_new_tokens=2)
    with pytest.raises(ValueError, match="attention_mask"):
        model.apply({"params": params}, prompt, jnp.ones_like(prompt))
    with pytest.raises(ValueError, match="hidden_size=16 in two halves"):
        cfg(num_heads=16, num_kv_heads=None, reversible=True)
    with pytest.raises(ValueError, match="layer_attention_options"):
        reversible_cfg(layer_attention_options=[{}, {}])


# ------------------------------------------------------------------ ragged generation

#: The attention variants with a decoding cache, with options that exercise it (a window
#: shorter than the prompts, few random features).
CACHED = {
    "dense": {},
    "local": {"window_size": 2},
    "performer": {"num_features": 8},
    "linear": {},
    "persistent_memory": {"num_slots": 3},
    # Checked at the layer (tests/layers/test_family_cores.py) in the fast suite; here
    # through generate too, slow. Tables sized for the model's 16 positions.
    "synthesizer": {"kind": "random", "mixture": True, "max_len": 16},
    "sinkhorn": {"block_size": 2, "max_len": 16},
    "routing": {"cluster_size": 2, "local_window": 2},
}
SLOW = ("synthesizer", "sinkhorn", "routing")
LENGTHS = (2, 5, 3)  # real prompt tokens per row, left-padded to max(LENGTHS)


@pytest.fixture(
    scope="module",
    params=[pytest.param(n, marks=[pytest.mark.slow] if n in SLOW else []) for n in sorted(CACHED)],
)
def ragged(request):
    """A two-layer model of one cached variant, and left-padded prompts of LENGTHS."""
    name = request.param
    model = DecoderLM(cfg(num_layers=2, attention=name, attention_options=CACHED[name]))
    width = max(LENGTHS)
    variables = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, width), jnp.int32))
    rows = [jax.random.randint(jax.random.key(10 + i), (n,), 1, 40) for i, n in enumerate(LENGTHS)]
    mask = jnp.arange(width)[None, :] >= width - jnp.asarray(LENGTHS)[:, None]
    ids = jnp.stack([jnp.pad(row, (width - len(row), 0)) for row in rows])  # pad id 0
    return model, variables, rows, ids, mask


def prefill_logits(model, variables, ids, mask):
    """Logits ``[B, P, V]`` of the prompt fed to a fresh cache with its padding mask."""
    decoder = model.clone(decode=True)
    total = ids.shape[1] + NEW
    cache = decoder.init(jax.random.key(0), jnp.zeros((ids.shape[0], total), jnp.int32))
    logits, _ = decoder.apply({**variables, "cache": cache["cache"]}, ids, mask, mutable=["cache"])
    return logits


def greedy_rows_without_cache(model, variables, rows, steps):
    """Each row decoded greedily on its own, without padding or cache, all in one program:
    a row starts at position 0 of a zero buffer, and causal logits at its last token
    ignore the zeros after it. Returns the new tokens ``[B, steps]`` and the logits of
    every buffer position before the first step ``[B, max len + steps, V]``."""
    apply = jax.jit(model.apply)
    lengths = np.array([len(row) for row in rows])
    seq = jnp.stack([jnp.pad(row, (0, max(lengths) + steps - len(row))) for row in rows])
    first_logits = apply(variables, seq)
    for i in range(steps):
        logits = first_logits if i == 0 else apply(variables, seq)
        next_ids = jnp.argmax(logits[np.arange(len(rows)), lengths + i - 1], axis=-1)
        seq = seq.at[np.arange(len(rows)), lengths + i].set(next_ids)
    return seq[np.arange(len(rows))[:, None], lengths[:, None] + np.arange(steps)], first_logits


def test_ragged_generation_equals_each_row_decoded_alone(ragged):
    model, variables, rows, ids, mask = ragged
    got = generate(model, variables, ids, prompt_mask=mask, max_new_tokens=NEW)
    np.testing.assert_array_equal(got[:, : ids.shape[1]], ids)  # the padded prompts stay
    want, full = greedy_rows_without_cache(model, variables, rows, NEW)
    np.testing.assert_array_equal(got[:, ids.shape[1] :], want)
    assert len(np.unique(np.asarray(want))) > 2  # non-trivial continuations
    # The most padded row through generate alone (its own cache, no mask) as well.
    b = int(np.argmin(LENGTHS))
    alone = generate(model, variables, rows[b][None], max_new_tokens=NEW)
    np.testing.assert_array_equal(got[b, ids.shape[1] :], alone[0, LENGTHS[b] :])
    # The prompt's logits (every real token's, not only the last) equal the unpadded rows'.
    logits = jax.jit(prefill_logits, static_argnums=0)(model, variables, ids, mask)
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(logits[b, ids.shape[1] - n :], full[b, :n], atol=1e-5)


def test_pad_tokens_change_nothing(ragged):
    model, variables, _rows, ids, mask = ragged
    other = jnp.where(mask, ids, jax.random.randint(jax.random.key(3), ids.shape, 0, 40))
    run = jax.jit(prefill_logits, static_argnums=0)
    np.testing.assert_allclose(
        jnp.where(mask[..., None], run(model, variables, other, mask), 0.0),
        jnp.where(mask[..., None], run(model, variables, ids, mask), 0.0),
        atol=1e-6,
    )
    np.testing.assert_array_equal(
        generate(model, variables, other, prompt_mask=mask, max_new_tokens=NEW)[:, ids.shape[1] :],
        generate(model, variables, ids, prompt_mask=mask, max_new_tokens=NEW)[:, ids.shape[1] :],
    )


def test_bad_prompt_masks_raise(lm):
    model, params, prompt = lm
    run = functools.partial(generate, model, {"params": params}, prompt, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"prompt_mask must have prompt_ids' shape \[B, P\]"):
        run(prompt_mask=jnp.ones((B, P + 1), bool))
    right = jnp.ones((B, P), bool).at[1, -1].set(False)
    with pytest.raises(ValueError, match=r"prompt_mask .* left padding .* rows \[1\]"):
        run(prompt_mask=right)
    empty = jnp.ones((B, P), bool).at[0].set(False)
    with pytest.raises(ValueError, match=r"prompt_mask of shape \(2, 4\) has rows without a real"):
        run(prompt_mask=empty)
    decoder = model.clone(decode=True)
    cache = decoder.init(jax.random.key(0), jnp.zeros((B, 8), jnp.int32))["cache"]
    with pytest.raises(ValueError, match=r"attention_mask shape \(2, 4, 1\) != input_ids"):
        decoder.apply({"params": params, "cache": cache}, prompt, jnp.ones((B, 4, 1)), mutable=True)
