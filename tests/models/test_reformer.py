import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from effjax.models import ReformerConfig, ReformerLM, next_token_loss

CONFIG = ReformerConfig(
    vocab_size=16, d_model=32, num_heads=2, num_layers=2, d_ff=64, max_len=32,
    num_hashes=2, num_buckets=4, chunk_size=8, ff_chunk_size=8, dropout_rate=0.1,
)  # fmt: skip


def copy_batch(rng, batch=4, half=16):
    """[0 w 0 w]-style sequences (the paper's duplication task, tiny)."""
    w = jax.random.randint(rng, (batch, half - 1), 1, CONFIG.vocab_size)
    zero = jnp.zeros((batch, 1), jnp.int32)
    return jnp.concatenate([zero, w, zero, w], axis=1)


@pytest.mark.slow  # compiles the full reversible LSH model's gradient
def test_trains_on_a_tiny_copy_task():
    model = ReformerLM(CONFIG)
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
    lsh_model = ReformerLM(dataclasses.replace(CONFIG, chunk_size=32))
    params = lsh_model.init(jax.random.key(1), tokens)
    dense_model = ReformerLM(dataclasses.replace(CONFIG, attention="dense"))
    np.testing.assert_allclose(
        jax.jit(lsh_model.apply)(params, tokens),
        jax.jit(dense_model.apply)(params, tokens),
        atol=1e-4,
    )
