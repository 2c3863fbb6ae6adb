"""Transformer-XL segment recurrence: DecoderConfig(mem_len=M) with relative positions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.models import MEMORY, DecoderConfig, DecoderLM, generate

CFG = DecoderConfig(
    vocab_size=16,
    hidden_size=16,
    num_layers=2,
    num_heads=2,
    intermediate_size=32,
    max_position_embeddings=64,
    hidden_dropout_rate=0.0,
    mem_len=4,
)
T = 4  # segment length
TOKENS = jax.random.randint(jax.random.key(0), (2, 3 * T), 1, 16)


@functools.cache
def _step(cfg: DecoderConfig):
    """One segment: ``(params, memory collections, ids) -> (logits, new memory)``."""
    model = DecoderLM(cfg)

    def step(params, memory, ids):
        logits, state = model.apply({"params": params, **memory}, ids, mutable=[MEMORY])
        return logits, dict(state)

    return jax.jit(step)


@functools.cache
def _params():
    return DecoderLM(CFG).init(jax.random.key(1), TOKENS[:, :T])["params"]


def run_segments(cfg, tokens, memory=None):
    """Logits of consecutive length-T segments of ``tokens``, carrying the memory."""
    memory = {} if memory is None else memory
    logits = []
    for start in range(0, tokens.shape[1], T):
        out, memory = _step(cfg)(_params(), memory, tokens[:, start : start + T])
        logits.append(out)
    return logits, memory


def test_second_segment_equals_the_full_sequence_when_memory_covers_it():
    # With M = T, segment 2 sees exactly what positions T..2T-1 of one causal pass over
    # both segments see, at the same relative distances, in every layer.
    (first, second), memory = run_segments(CFG, TOKENS[:, : 2 * T])
    full = DecoderLM(CFG.replace(mem_len=0)).apply({"params": _params()}, TOKENS[:, : 2 * T])
    np.testing.assert_allclose(first, full[:, :T], atol=1e-5)
    np.testing.assert_allclose(second, full[:, T:], atol=1e-5)
    assert memory[MEMORY]["layer_1"]["memory"]["mask"].all()
    # ... and the memory is what carries it: segment 2 alone differs.
    alone = DecoderLM(CFG.replace(mem_len=0)).apply({"params": _params()}, TOKENS[:, T : 2 * T])
    assert np.abs(alone - second).max() > 1e-3


def _segment2_change(cfg, position):
    """Largest change of segment 2's logits when segment 1's token ``position`` changes."""
    tokens = TOKENS[:, : 2 * T]
    perturbed = tokens.at[:, position].set((tokens[:, position] + 5) % 16)
    (_, base), _ = run_segments(cfg, tokens)
    (_, moved), _ = run_segments(cfg, perturbed)
    return float(np.abs(base - moved).max())


def test_prediction_depends_on_tokens_m_back_only_with_memory():
    # One layer: its memory holds the last M token embeddings of segment 1, so segment 2
    # depends on segment 1's token at T - M (M positions before its first query) and
    # not on the one before; without memory on neither.
    one_layer = CFG.replace(num_layers=1, mem_len=3)
    assert _segment2_change(one_layer, T - 3) > 1e-3
    assert _segment2_change(one_layer, T - 4) == 0.0
    no_memory = one_layer.replace(mem_len=0)
    assert _segment2_change(no_memory, T - 3) == 0.0
    # Evaluating the same parameters with a longer memory reaches further back.
    longer = one_layer.replace(eval_mem_len=4).evaluation_config()
    assert longer.mem_len == 4
    assert _segment2_change(longer, T - 4) > 1e-3


def test_empty_or_padded_memory_changes_nothing():
    no_memory = DecoderLM(CFG.replace(mem_len=0)).apply({"params": _params()}, TOKENS[:, :T])
    (fresh,), memory = run_segments(CFG, TOKENS[:, :T])
    np.testing.assert_allclose(fresh, no_memory, atol=1e-6)
    # Slots marked empty are ignored whatever they hold.
    garbage = jax.tree.map(lambda x: x, memory)
    for layer in garbage[MEMORY].values():
        layer["memory"]["hidden"] = 100 * jnp.ones_like(layer["memory"]["hidden"])
        layer["memory"]["mask"] = jnp.zeros_like(layer["memory"]["mask"])
    (padded,), _ = run_segments(CFG, TOKENS[:, :T], garbage)
    np.testing.assert_allclose(padded, no_memory, atol=1e-6)


def test_no_gradient_flows_into_the_memory():
    model = DecoderLM(CFG)
    _, memory = run_segments(CFG, TOKENS[:, :T])
    segment = TOKENS[:, T : 2 * T]

    def loss_of_memory(hidden):
        state = {
            MEMORY: {
                **memory[MEMORY],
                "layer_1": {
                    "memory": {
                        "hidden": hidden,
                        "mask": memory[MEMORY]["layer_1"]["memory"]["mask"],
                    }
                },
            }
        }
        logits = model.apply({"params": _params(), **state}, segment)
        return jnp.sum(logits**2)  # fmt: skip

    grad = jax.grad(loss_of_memory)(memory[MEMORY]["layer_1"]["memory"]["hidden"])
    assert float(jnp.abs(grad).max()) == 0.0

    def two_segments(params):  # segment 1 writes the memory with the same params
        _, state = model.apply({"params": params}, TOKENS[:, :T], mutable=[MEMORY])
        return jnp.sum(model.apply({"params": params, **state}, segment) ** 2)

    def constant_memory(params):
        return jnp.sum(model.apply({"params": params, **memory}, segment) ** 2)

    through, held = jax.grad(two_segments)(_params()), jax.grad(constant_memory)(_params())
    for a, b in zip(jax.tree.leaves(through), jax.tree.leaves(held), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attention": "local"}, r"attention='local' has no such form"),
        ({"positions": "learned"}, r"mem_len=4 .* needs positions='relative'"),
        ({"mem_len": -1, "positions": "relative"}, r"mem_len must be >= 0, got -1"),
        ({"eval_mem_len": -2}, r"eval_mem_len must be >= 0, got -2"),
    ],
)
def test_bad_memory_configs_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        CFG.replace(**changes)


def test_relative_positions_refuse_cached_decoding():
    variables = DecoderLM(CFG).init(jax.random.key(0), TOKENS[:, :T])
    with pytest.raises(ValueError, match=r"positions='relative'.*no cached decoding"):
        generate(DecoderLM(CFG), variables, TOKENS[:, :2], max_new_tokens=2)
