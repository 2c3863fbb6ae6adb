"""The Reformer preset of the decoder: reversible blocks, LSH attention, chunked FF."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from effjax.models import DecoderLM, next_token_loss, reformer_config

LSH = {"num_hashes": 2, "num_buckets": 4, "chunk_size": 8}


def config(**changes):
    base = dict(
        vocab_size=16, d_model=16, num_heads=2, num_layers=2, d_ff=32, max_len=32,
        attention_options=LSH, ff_chunk_size=8,
    )  # fmt: skip
    return reformer_config(**{**base, **changes})


def copy_batch(rng, batch=4, half=16):
    """[0 w 0 w]-style sequences (the paper's duplication task, tiny)."""
    w = jax.random.randint(rng, (batch, half - 1), 1, 16)
    zero = jnp.zeros((batch, 1), jnp.int32)
    return jnp.concatenate([zero, w, zero, w], axis=1)


def test_the_preset_is_a_reversible_lsh_decoder_with_chunked_feed_forward():
    cfg = config()
    assert (cfg.reversible, cfg.attention, cfg.ff_chunk_size) == (True, "lsh", 8)
    assert cfg.hidden_size == 32 and dict(cfg.attention_options) == LSH


def test_sinusoidal_positions_are_used_and_unknown_positions_refused():
    tokens = copy_batch(jax.random.key(0))
    model = DecoderLM(config(positions="sinusoidal", attention="dense", attention_options={}))
    variables = jax.jit(model.init)(jax.random.key(1), tokens)
    assert "position_embeddings" not in variables["params"]  # fixed, not learned
    learned = DecoderLM(model.config.replace(positions="learned"))
    assert (
        "position_embeddings" in jax.eval_shape(learned.init, jax.random.key(1), tokens)["params"]
    )
    # Positions reach the output: the same token at two positions gets two predictions.
    same = jnp.zeros_like(tokens)
    logits = jax.jit(model.apply)(variables, same)
    assert not np.allclose(logits[:, 1], logits[:, 2], atol=1e-4)
    # At initialisation the position codes are on the token embeddings' scale, so
    # neither drowns the other.
    codes = model.apply({}, same, None, method=DecoderLM._position_embeddings)[0]
    token_table = variables["params"]["token_embeddings"]["embedding"]
    ratio = np.linalg.norm(codes, axis=-1).mean() / np.linalg.norm(token_table, axis=-1).mean()
    assert 0.7 < ratio < 1.4, ratio
    with pytest.raises(ValueError, match="positions must be one of"):
        config(positions="rotary")


def test_each_half_of_the_reversible_stack_gets_relative_sinusoidal_positions():
    """The attention branch reads one half of the hidden state; its position codes must
    have ``PE(p) . PE(q)`` depending on ``p - q`` only (Vaswani et al. 2017, Sec. 3.5), or a
    one-layer model cannot attend a fixed distance back (the duplication task)."""
    model = DecoderLM(config(positions="sinusoidal", attention="dense", attention_options={}))
    ids = jnp.zeros((1, 32), jnp.int32)
    codes = model.apply({}, ids, None, method=DecoderLM._position_embeddings)[0]
    assert codes.shape == (32, 32)
    for half in jnp.split(codes, 2, axis=-1):
        gram = np.asarray(half @ half.T)
        # Toeplitz: the entry at (p, q) equals the one at (p + 1, q + 1).
        np.testing.assert_allclose(gram[1:, 1:], gram[:-1, :-1], atol=1e-4)
        assert gram[0, 0] - gram[0, 5] > 0.1 * gram[0, 0]  # and it does vary with the offset


@pytest.mark.slow  # compiles the full reversible LSH model's gradient
def test_trains_on_a_tiny_copy_task():
    model = DecoderLM(config(dropout_rate=0.1))
    tokens = copy_batch(jax.random.key(0))
    params = model.init(jax.random.key(1), tokens)["params"]
    optimizer = optax.adam(3e-3)

    @jax.jit
    def step(params, opt_state, rng):
        def loss_fn(p):
            logits = model.apply(
                {"params": p},
                tokens,
                deterministic=False,
                rngs={"attention": rng, "dropout": jax.random.fold_in(rng, 1)},
            )
            return next_token_loss(logits, tokens)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state = optimizer.init(params)
    losses = []
    for i in range(15):
        params, opt_state, loss = step(params, opt_state, jax.random.key(100 + i))
        losses.append(float(loss))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.7 * losses[0], losses


def test_dense_and_one_chunk_lsh_models_agree():
    """Same parameters: LSH with one chunk covering the sequence is full attention."""
    tokens = copy_batch(jax.random.key(0), batch=1)
    lsh_model = DecoderLM(config(num_layers=1, attention_options={**LSH, "chunk_size": 32}))
    params = jax.jit(lsh_model.init)(jax.random.key(1), tokens)
    dense_model = DecoderLM(config(num_layers=1, attention="dense", attention_options={}))
    np.testing.assert_allclose(
        jax.jit(lsh_model.apply)(params, tokens),
        jax.jit(dense_model.apply)(params, tokens),
        atol=1e-4,
    )
