"""Transformer-XL segment recurrence: DecoderConfig(mem_len=M) with relative positions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from effjax.layers import RelativePositionCore
from effjax.models import (
    COMPRESSION_LOSSES,
    MEMORY,
    DecoderConfig,
    DecoderLM,
    compression_losses,
    generate,
    next_token_loss,
)

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
@functools.cache
def _params(cfg: DecoderConfig = CFG):
    # Jitted and cached: initialising op by op cost seconds per test.
    return jax.jit(DecoderLM(cfg).init)(jax.random.key(1), TOKENS[:, :T])["params"]


@functools.cache
def _forward(cfg: DecoderConfig):
    """Jitted ``(variables, ids) -> logits`` of a fresh ``DecoderLM(cfg)``."""
    return jax.jit(DecoderLM(cfg).apply)


def run_segments(cfg, tokens, memory=None, params=None):
    """Logits of consecutive length-T segments of ``tokens``, carrying the memory."""
    memory = {} if memory is None else memory
    params = _params() if params is None else params
    logits = []
    for start in range(0, tokens.shape[1], T):
        out, memory = _step(cfg)(params, memory, tokens[:, start : start + T])
        logits.append(out)
    return logits, memory


def test_second_segment_equals_the_full_sequence_when_memory_covers_it():
    # With M = T, segment 2 sees exactly what positions T..2T-1 of one causal pass over
    # both segments see, at the same relative distances, in every layer.
    (first, second), memory = run_segments(CFG, TOKENS[:, : 2 * T])
    full = _forward(CFG.replace(mem_len=0))({"params": _params()}, TOKENS[:, : 2 * T])
    np.testing.assert_allclose(first, full[:, :T], atol=1e-5)
    np.testing.assert_allclose(second, full[:, T:], atol=1e-5)
    assert memory[MEMORY]["layer_1"]["memory"]["mask"].all()
    # ... and the memory is what carries it: segment 2 alone differs.
    alone = _forward(CFG.replace(mem_len=0))({"params": _params()}, TOKENS[:, T : 2 * T])
    assert np.abs(alone - second).max() > 1e-3


def _segment2_change(cfg, position, segments=2):
    """Largest change of the last segment's logits when segment 1's token ``position``
    changes (``segments`` segments)."""
    tokens = TOKENS[:, : segments * T]
    perturbed = tokens.at[:, position].set((tokens[:, position] + 5) % 16)
    base, _ = run_segments(cfg, tokens)
    moved, _ = run_segments(cfg, perturbed)
    return float(np.abs(base[-1] - moved[-1]).max())


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
    no_memory = _forward(CFG.replace(mem_len=0))({"params": _params()}, TOKENS[:, :T])
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

    grad = jax.jit(jax.grad(loss_of_memory))(memory[MEMORY]["layer_1"]["memory"]["hidden"])
    assert float(jnp.abs(grad).max()) == 0.0

    def two_segments(params):  # segment 1 writes the memory with the same params
        _, state = model.apply({"params": params}, TOKENS[:, :T], mutable=[MEMORY])
        return jnp.sum(model.apply({"params": params, **state}, segment) ** 2)

    def constant_memory(params):
        return jnp.sum(model.apply({"params": params, **memory}, segment) ** 2)

    through = jax.jit(jax.grad(two_segments))(_params())
    held = jax.jit(jax.grad(constant_memory))(_params())
    for a, b in zip(jax.tree.leaves(through), jax.tree.leaves(held), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"attention": "local"}, r"attention='local' has no such form"),
        ({"positions": "learned"}, r"mem_len=4 .* needs positions='relative'"),
        ({"mem_len": -1, "positions": "relative"}, r"mem_len must be >= 0, got -1"),
        ({"eval_mem_len": -2}, r"eval_mem_len must be >= 0, got -2"),
        ({"compressed_mem_len": -1}, r"compressed_mem_len must be >= 0, got -1"),
        ({"compression_rate": 0}, r"compression_rate must be >= 1, got 0"),
        ({"compression": "max"}, r"compression must be one of \('mean', 'conv'\), got 'max'"),
        (
            {"mem_len": 0, "compressed_mem_len": 2, "positions": "relative"},
            r"compressed_mem_len=2 needs mem_len > 0",
        ),
    ],
)
def test_bad_memory_configs_raise(changes, message):
    with pytest.raises(ValueError, match=message):
        CFG.replace(**changes)


@pytest.mark.parametrize("mem_len", [0, 4])
def test_cached_decoding_equals_greedy_reforward(mem_len):
    # The relative core's cache shifts every distance to the query's true position; the
    # memory is not read (the cache holds the whole sequence). A causal pass over the
    # final sequence gives each prefix's logits, so greedy re-forwarding would pick
    # exactly the argmax at each position.
    model = DecoderLM(CFG.replace(mem_len=mem_len, positions="relative"))
    variables = {"params": _params()}
    prompt, steps = TOKENS[:, :3], 5
    generated = generate(model, variables, prompt, max_new_tokens=steps)
    full = _forward(model.config)(variables, generated)
    assert generated[:, 3:].tolist() == jnp.argmax(full[:, 2:-1], axis=-1).tolist()
    # The cached logits themselves: the prompt in one call, then one token per call.
    decoder = model.clone(decode=True)
    state = {"cache": decoder.init(jax.random.key(0), generated)["cache"]}
    # Jitted: two programs (3 tokens, then 1) instead of every operation dispatched alone.
    apply = jax.jit(functools.partial(decoder.apply, mutable=["cache"]))
    cached = []
    for start, stop in [(0, 3), *((t, t + 1) for t in range(3, 3 + steps))]:
        logits, state = apply({**variables, **state}, generated[:, start:stop])
        cached.append(logits)
    np.testing.assert_allclose(jnp.concatenate(cached, axis=1), full, atol=1e-5)


def test_a_left_padded_row_decodes_as_it_would_alone():
    model = DecoderLM(CFG.replace(mem_len=0, positions="relative"))
    variables, prompt, steps = {"params": _params()}, TOKENS[:, :3], 5
    mask = jnp.array([[True] * 3, [False, True, True]])
    ragged = generate(model, variables, prompt, prompt_mask=mask, max_new_tokens=steps)
    alone = generate(model, variables, prompt[1:, 1:], max_new_tokens=steps)
    assert ragged[1, 3:].tolist() == alone[0, 2:].tolist()


# ---------------------------------------------------------------- compressive memory

COMPRESSIVE = CFG.replace(mem_len=2, compressed_mem_len=2, compression_rate=2)


@pytest.mark.parametrize("compression", ["mean", "conv"])
def test_rate_one_compression_is_a_longer_memory(compression):
    # c = 1 moves each evicted position into the compressed memory unchanged (the conv
    # starts as the mean), so [compressed(2); memory(2)] is a memory of 4.
    cfg = COMPRESSIVE.replace(compression_rate=1, compression=compression)
    params = _params(cfg)
    compressed, _ = run_segments(cfg, TOKENS, params=params)
    longer, _ = run_segments(CFG.replace(mem_len=4), TOKENS, params=params)
    for a, b in zip(compressed, longer, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_mean_compression_averages_the_evicted_positions():
    # Layer 0's memory holds token embeddings. M = 3, T = 4, c = 2: segment 1 evicts
    # [empty, empty, empty, t0] (one slot: t0 alone, the mean over real positions),
    # segment 2 evicts [t1, t2, t3, t4].
    cfg = COMPRESSIVE.replace(mem_len=3, compression="mean")
    table = np.asarray(_params()["token_embeddings"]["embedding"])
    e = table[np.asarray(TOKENS)]  # [B, 3T, D]
    _, first = run_segments(cfg, TOKENS[:, :T])
    layer = first[MEMORY]["layer_0"]["memory"]
    assert layer["compressed_mask"].tolist() == [[False, True]] * 2
    np.testing.assert_allclose(layer["compressed"][:, 1], e[:, 0], atol=1e-6)
    _, second = run_segments(cfg, TOKENS[:, : 2 * T])
    layer = second[MEMORY]["layer_0"]["memory"]
    assert layer["compressed_mask"].all()
    hand = np.stack([(e[:, 1] + e[:, 2]) / 2, (e[:, 3] + e[:, 4]) / 2], axis=1)
    np.testing.assert_allclose(layer["compressed"], hand, atol=1e-6)


def test_compressed_memory_reaches_beyond_the_memory():
    # One layer, M = 2, T = 4, c = 2, M_c = 2: segment 3 sees segment 1's positions 2, 3
    # only through the compressed slots (segment 2 evicted them), position 1 not at all.
    one_layer = COMPRESSIVE.replace(num_layers=1, compression="mean")
    assert _segment2_change(one_layer, 2, segments=3) > 1e-3
    assert _segment2_change(one_layer, 1, segments=3) == 0.0
    assert _segment2_change(one_layer.replace(compressed_mem_len=0), 2, segments=3) == 0.0


def test_only_the_reconstruction_loss_trains_the_compressor():
    model = DecoderLM(COMPRESSIVE)
    params = _params(COMPRESSIVE)
    _, memory = run_segments(COMPRESSIVE, TOKENS[:, : 2 * T], params=params)
    segment = TOKENS[:, 2 * T :]

    def losses(params, memory):
        logits, sown = model.apply(
            {"params": params, **memory}, segment, mutable=[MEMORY, COMPRESSION_LOSSES]
        )
        return next_token_loss(logits, segment), compression_losses(sown)["aux_loss"]

    def lm_over_two_segments(params):  # segment 2 compresses with the same params
        _, state = model.apply({"params": params}, TOKENS[:, :T], mutable=[MEMORY])
        _, state = model.apply({"params": params, **state}, TOKENS[:, T : 2 * T], mutable=[MEMORY])
        return losses(params, state)[0]

    aux_grad = jax.jit(jax.grad(lambda p: losses(p, memory)[1]))(params)
    lm_grads = [
        jax.jit(jax.grad(lambda p: losses(p, memory)[0]))(params),
        jax.jit(jax.grad(lm_over_two_segments))(params),
    ]
    for path, leaf in jax.tree_util.tree_leaves_with_path(aux_grad):
        name = jax.tree_util.keystr(path)
        if "compress" in name:
            assert float(jnp.abs(leaf).max()) > 0, name
        else:
            assert float(jnp.abs(leaf).max()) == 0.0, name
    for grads in lm_grads:
        for layer in ("layer_0", "layer_1"):
            for leaf in jax.tree.leaves(grads[layer]["memory"]):
                assert float(jnp.abs(leaf).max()) == 0.0


def test_segment_length_must_be_a_multiple_of_the_compression_rate():
    cfg = COMPRESSIVE.replace(compression_rate=3)
    with pytest.raises(ValueError, match=r"segment length T=4 .* multiple of compression_rate=3"):
        DecoderLM(cfg).init(jax.random.key(0), TOKENS[:, :T])


def test_the_relative_core_runs_only_xla():
    # Its position terms are a dense bias: the kernels without a bias path do not apply.
    assert RelativePositionCore(implementation="xla").implementation == "xla"
    with pytest.raises(ValueError, match=r"implementation must be one of \('xla',\), got 'pallas'"):
        RelativePositionCore(implementation="pallas")
