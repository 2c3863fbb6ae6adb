"""BigBird block-sparse attention (ITC: window + global + random blocks; Zaheer et al. 2020).

The sequence is cut into blocks of ``b`` tokens. A query block attends to whole key
blocks: its window (itself and its two neighbours), the global blocks, and
``num_random_blocks`` blocks drawn at random; the global query blocks attend to every
block. Which key blocks a query block reads is an index table ``[P, Tb, C]`` built
from the ``rng`` key with :mod:`jax.random` (so it changes with the key, also under
``jit``); the keys are gathered with it, so the cost is O(T C b) for
``C = 3 + num_global_blocks + num_random_blocks``, plus O(g b T) for the global rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from effjax.attention import _blockwise, _common, pallas
from effjax.attention import masks as masks_lib

#: The paths of :func:`block_sparse_attention` (``implementation=``); None picks by
#: :func:`default_implementation`.
IMPLEMENTATIONS = (None, "xla", "pallas")


def default_implementation(
    backend: str,
    *,
    dtypes: tuple = ("float32",),
    same_head_dims: bool = True,
    static_rng: bool = True,
) -> str:
    """What ``implementation=None`` runs: ``"pallas"`` (splash attention on the static
    block mask) on a TPU when ``rng`` is concrete (splash masks are drawn at trace time;
    a key traced under ``jit`` keeps a pattern per key only on the XLA path) and
    :func:`~effjax.attention.pallas.splash_fits` (one dtype of float32/bfloat16, equal
    head dims), else ``"xla"`` (on CPU and GPU always). Both paths draw the same pattern
    from the same key, so the choice never changes the result.

    Example:
      >>> default_implementation("tpu"), default_implementation("tpu", static_rng=False)
      ('pallas', 'xla')
    """
    fits = pallas.splash_fits(backend, dtypes, same_head_dims)
    return "pallas" if fits and static_rng else "xla"


def _check_rng(rng) -> jax.Array:
    if rng is None:
        raise ValueError("rng is required: a jax.random key that draws the random blocks")
    return rng


def block_table(
    rng: jax.Array,
    num_blocks: int,
    *,
    num_global_blocks: int,
    num_random_blocks: int,
    is_causal: bool,
    num_patterns: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Key blocks read by each non-global query block ``i`` in ``[g, Tb)``.

    Slots, in order: the window (blocks ``i-1, i, i+1``; causal ``i-1, i``), the global
    blocks ``0 .. g-1``, then ``r`` distinct random blocks that are neither global nor in
    the window (causal: strictly before the window). A window slot that falls outside
    ``[g, Tb)`` (a global slot already covers blocks below ``g``) holds one more random
    block instead, so every row reads its full budget of ``C = 3 + g + r`` blocks
    (causal ``2 + g + r``) while enough blocks remain; a row with fewer candidates uses
    all of them and leaves the other slots unused. Hence when ``Tb <= C`` every row
    reads every block: the pattern is dense attention.

    Returns:
      ``table`` int32 ``[P, Tb - g, C]`` of key-block ids and ``used`` bool of the same
      shape (False = an unused slot). ``P = num_patterns`` independent random patterns.
    """
    g, r = num_global_blocks, num_random_blocks
    rows = np.arange(g, num_blocks)[:, None]
    offsets = np.array([-1, 0] if is_causal else [-1, 0, 1])
    window = rows + offsets[None]
    window_used = (window >= g) & (window < num_blocks)
    globals_ = np.broadcast_to(np.arange(g)[None], (rows.shape[0], g))
    spare = np.sum(~window_used, axis=1, keepdims=True)  # window slots left for random blocks
    wanted = r + spare  # [rows, 1] random blocks per row
    extra = int(spare.max(initial=0))

    # Candidates for random blocks: [g, Tb) minus the window [lo, hi] (causal: [g, i-1)).
    if is_causal:
        count = np.maximum(rows - 1 - g, 0)
        lo, skip = np.full_like(rows, num_blocks), np.zeros_like(rows)
    else:
        lo = np.maximum(rows - 1, g)
        skip = np.minimum(rows + 1, num_blocks - 1) - lo + 1
        count = num_blocks - g - skip
    # wanted distinct candidate indices per row: sorted draws from [0, count - wanted] plus
    # 0, 1, ..; the slots a row does not want draw a value past every candidate.
    slot = np.arange(r + extra)[None]
    draws = jax.random.randint(
        rng, (num_patterns, rows.shape[0], r + extra), 0, np.maximum(count - wanted, 0)[None] + 1
    )
    draws = jnp.where(slot[None] < wanted[None], draws, count[None])
    candidate = jnp.sort(draws, axis=-1) + slot[None]
    random_used = (candidate < count[None]) & (slot[None] < wanted[None])
    random = g + candidate
    random = jnp.where(random < lo[None], random, random + skip[None])

    shape = (num_patterns, rows.shape[0])
    # The k-th unused window slot of a row takes the row's (r + k)-th random block.
    spare_index = np.where(window_used, 0, r + np.cumsum(~window_used, axis=1) - 1)
    window_shape = (*shape, window.shape[1])
    spare_index, window, window_used = (
        np.broadcast_to(x, window_shape) for x in (spare_index, window, window_used)
    )
    window_table = jnp.where(window_used, window, jnp.take_along_axis(random, spare_index, axis=-1))
    window_used = window_used | jnp.take_along_axis(random_used, spare_index, axis=-1)
    table = jnp.concatenate(
        [window_table, np.broadcast_to(globals_, (*shape, g)), random[..., :r]], axis=-1
    ).astype(jnp.int32)
    used = jnp.concatenate(
        [window_used, jnp.ones((*shape, g), bool), random_used[..., :r]], axis=-1
    )
    return jnp.where(used, table, 0), used


def _gather_blocks(x: jax.Array, table: jax.Array, block_size: int) -> jax.Array:
    """``x [B, Tb*b, K, H]``, ``table [P, Q, C]`` (P = 1 or K) -> ``[B, Q, C*b, K, H]``."""
    batch, length, heads, dim = x.shape
    num_patterns, rows, slots = table.shape
    blocks = x.reshape(batch, length // block_size, block_size, heads, dim)
    if num_patterns == 1:  # One pattern: gather whole blocks in place, no transpose.
        gathered = jnp.take(blocks, table[0], axis=1)  # [B, Q, C, b, K, H]
        return gathered.reshape(batch, rows, slots * block_size, heads, dim)
    blocks = jnp.moveaxis(blocks, 3, 1)  # [B, K, Tb, b, H]
    gathered = blocks[:, np.arange(heads)[:, None], table.reshape(heads, rows * slots)]
    gathered = gathered.reshape(batch, heads, rows, slots * block_size, dim)
    return jnp.moveaxis(gathered, 1, 3)


def static_block_mask(rng, num_blocks, g, r, is_causal, num_patterns) -> np.ndarray:
    """:func:`block_level_mask` drawn at trace time, as numpy (splash masks are static)."""
    try:
        with jax.ensure_compile_time_eval():
            return np.asarray(block_level_mask(rng, num_blocks, g, r, is_causal, num_patterns))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        raise ValueError(
            "implementation='pallas' draws BigBird's random blocks at trace time (splash "
            "masks are static): rng must be a concrete key, not a traced argument of a "
            "jitted function; use implementation='xla' for a pattern per traced key"
        ) from None


def _block_rows_have_key(
    key_valid: jax.Array, block_mask: np.ndarray, block_size: int, is_causal: bool
) -> jax.Array:
    """bool ``[B, L, P]``: query ``t`` sees a real key under pattern ``p``, from which blocks
    of ``key_valid [B, L]`` (``L = Tb * b``) hold one; causal: earlier blocks whole, its
    own block up to ``t`` (every row reads its own block)."""
    batch, length = key_valid.shape
    num_blocks = length // block_size
    blocks = key_valid.reshape(batch, num_blocks, block_size)
    whole = block_mask & np.tri(num_blocks, k=-1, dtype=bool) if is_causal else block_mask
    real_block = jnp.any(blocks, axis=-1).astype(jnp.int32)
    rows = jnp.einsum("bj,pij->bpi", real_block, whole.astype(np.int32)) > 0
    rows = jnp.repeat(rows, block_size, axis=-1)  # [B, P, L]
    if is_causal:
        rows = rows | (jnp.cumsum(blocks, axis=-1) > 0).reshape(batch, 1, length)
    return jnp.moveaxis(rows, 1, 2)


def _pallas_block_sparse(query, key, value, dims, padding_mask, is_causal, scale, block_mask, b):
    """``implementation="pallas"``: splash attention on ``block_mask [P, Tb, Tb]``."""
    pallas.check_same_head_dims(dims, key, value)
    tiles = pallas.Tiles.of(dims.q_len, dims.kv_len, None, None)
    specs = tuple(
        ("pattern", tiles.shape, masks_lib.BlockPattern(m, b, tiles.shape, is_causal=is_causal))
        for m in block_mask
    )
    key_valid = jnp.ones((dims.batch, dims.kv_len), bool) if padding_mask is None else padding_mask
    out = pallas.splash_grouped(
        _common.group_heads(query, dims.num_kv_heads),
        key,
        value,
        key_valid=key_valid,
        specs=specs,
        tiles=tiles,
        scale=scale,
        interpret=pallas.resolve_interpret(None),
    )
    length = block_mask.shape[-1] * b
    valid = _common.pad_axis(key_valid, 1, length, value=False)
    has_key = _block_rows_have_key(valid, block_mask, b, bool(is_causal))[:, : dims.q_len]
    out = jnp.where(has_key[:, :, :, None, None], out, 0)
    return _common.ungroup_heads(out).astype(value.dtype)


def block_sparse_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    rng: jax.Array,
    block_size: int = 64,
    num_random_blocks: int = 3,
    num_global_blocks: int = 2,
    padding_mask: jax.Array | None = None,
    is_causal: bool = False,
    scale: float | None = None,
    per_head: bool = False,
    implementation: str | None = None,
) -> jax.Array:
    r"""BigBird ITC block-sparse self-attention (Zaheer et al. 2020, sec. 2 and app. D).

    With blocks of ``b`` tokens, query block ``i`` sees key blocks ``i-1, i, i+1``, the
    global blocks ``0 .. g-1`` (the first ``g = num_global_blocks`` blocks: ETC-style
    prefix globals, so the pattern is the same with and without ``is_causal``) and ``r``
    random blocks drawn from ``rng``; query blocks ``0 .. g-1`` see every block. Causal
    mode keeps blocks at or before ``i`` (random ones strictly before the window) and
    masks the future inside the diagonal block. Equals
    :func:`~effjax.attention.dot_product_attention` with ``mask=block_sparse_mask(T,
    rng=rng, ...)`` and the same ``is_causal``/``padding_mask``.

    Any ``T`` works: the last block is padded internally. A window slot outside the
    non-global blocks (rows ``g`` and ``Tb - 1``) reads one more random block, so every
    row reads ``3 + g + r`` blocks (causal ``2 + g + r``) while there are that many.
    The pattern never switches to dense; a short sequence whose ``Tb = ceil(T / b)``
    blocks fit that budget (``Tb <= 3 + g + r``, causal ``Tb <= 2 + g + r``, or
    ``Tb <= g``) sees every block by it, which equals dense attention (as transformers'
    BigBird, which runs full attention on such inputs).

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, T, K, H]`` (self-attention), K divides N.
      value: ``[B, T, K, Hv]``.
      rng: a :func:`jax.random.key` that draws the random blocks.
      block_size: ``b > 0``.
      num_random_blocks: ``r >= 0``.
      num_global_blocks: ``g >= 0``.
      padding_mask: bool ``[B, T]``, True = a real key.
      is_causal: keep only keys at or before the query.
      scale: logit scale, default ``1 / sqrt(H)``.
      per_head: draw an independent random pattern per key/value head (query heads
        sharing a key/value head share it) instead of one for all heads.
      implementation: ``"xla"`` (gathered key blocks, above), ``"pallas"`` (JAX's
        splash-attention kernel on the pattern's static block mask, in interpret mode
        off TPU), or ``None``: :func:`default_implementation` (``"pallas"`` on a TPU
        for a concrete ``rng``, else ``"xla"``). Splash masks are static, so on
        ``"pallas"`` the random blocks are drawn at trace time and ``rng`` must be a
        concrete key (not a traced argument of a jitted function): the pattern is
        fixed per call site, e.g. per layer (see ``BlockSparseCore``).

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype``, at O(T (3 + g + r) b H) cost.

    Raises:
      ValueError: bad shapes, ``T != S``, ``block_size <= 0``, negative block counts,
        a missing ``rng``, an implementation this function lacks, or on ``"pallas"`` a
        traced ``rng``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> q = k = v = jnp.ones((1, 500, 4, 8))
      >>> block_sparse_attention(q, k, v, rng=jax.random.key(0), block_size=32).shape
      (1, 500, 4, 8)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    dims = _common.check_qkv(query, key, value)
    _common.check_self_attention("block_sparse_attention", query, key, dims)
    padding_mask = _common.check_padding_mask(padding_mask, dims)
    b = _common.check_positive("block_size", block_size)
    r = _common.check_static_int("num_random_blocks", num_random_blocks)
    rng = _check_rng(rng)
    _common.check_implementation("block_sparse_attention", implementation, IMPLEMENTATIONS)
    if implementation is None:
        implementation = default_implementation(
            jax.default_backend(),
            dtypes=(query.dtype, key.dtype, value.dtype),
            same_head_dims=dims.value_dim == dims.head_dim,
            static_rng=not isinstance(rng, jax.core.Tracer),
        )
    if dims.empty:
        return _common.zeros_output(dims, value)
    num_blocks = -(-dims.q_len // b)
    g = min(_common.check_static_int("num_global_blocks", num_global_blocks), num_blocks)
    scale = _common.resolve_scale(scale, dims.head_dim)
    length = num_blocks * b
    if implementation == "pallas":
        num_patterns = dims.num_kv_heads if per_head else 1
        return _pallas_block_sparse(
            query, key, value, dims, padding_mask, is_causal, scale,
            static_block_mask(rng, num_blocks, g, r, is_causal, num_patterns), b,
        )  # fmt: skip

    q = _common.pad_axis(_common.group_heads(query, dims.num_kv_heads), 1, length)
    k, v = _common.pad_axis(key, 1, length), _common.pad_axis(value, 1, length)
    key_valid = jnp.ones((dims.batch, dims.kv_len), bool) if padding_mask is None else padding_mask
    key_valid = _common.pad_axis(key_valid, 1, length, value=False)
    positions = np.arange(length)
    outputs = []

    if g > 0:  # Global query blocks: every key.
        mask = key_valid[:, None, None, None, None, :]
        if is_causal:
            mask = mask & (positions[None, :] <= positions[: g * b, None])[None, None, None, None]
        out, _ = _blockwise.block_attention(
            q[:, None, : g * b], k[:, None], v[:, None], mask, scale
        )
        outputs.append(out[:, 0])

    if g < num_blocks:  # The other query blocks: their gathered key blocks.
        table, used = block_table(
            rng,
            num_blocks,
            num_global_blocks=g,
            num_random_blocks=r,
            is_causal=is_causal,
            num_patterns=dims.num_kv_heads if per_head else 1,
        )
        rows = num_blocks - g
        key_pos = (table[..., None] * b + np.arange(b)[None, None, None]).reshape(
            *table.shape[:2], -1
        )
        mask = jnp.repeat(used, b, axis=-1)[None]  # [1, P, Q, C*b]
        mask = mask & key_valid.reshape(dims.batch, num_blocks, b)[:, table].reshape(
            dims.batch, *key_pos.shape
        )
        mask = jnp.moveaxis(mask, 1, 2)[:, :, :, None, None, :]  # [B, Q, P, 1, 1, C*b]
        if is_causal:
            query_pos = positions[g * b :].reshape(rows, b)
            causal = key_pos[:, :, None, :] <= query_pos[None, :, :, None]  # [P, Q, b, C*b]
            mask = mask & jnp.moveaxis(causal, 0, 1)[None, :, :, None]
        out, _ = _blockwise.block_attention(
            q[:, g * b :].reshape(dims.batch, rows, b, *q.shape[2:]),
            _gather_blocks(k, table, b),
            _gather_blocks(v, table, b),
            mask,
            scale,
        )
        outputs.append(out.reshape(dims.batch, rows * b, *out.shape[3:]))

    out = jnp.concatenate(outputs, axis=1)[:, : dims.q_len]
    return _common.ungroup_heads(out).astype(value.dtype)


def block_sparse_mask(
    seq_len: int,
    *,
    rng: jax.Array,
    block_size: int = 64,
    num_random_blocks: int = 3,
    num_global_blocks: int = 2,
    is_causal: bool = False,
    num_heads: int | None = None,
    num_kv_heads: int | None = None,
) -> jax.Array:
    """The dense bool mask :func:`block_sparse_attention` equals (its contract), same table.

    Returns ``[T, T]`` for the shared pattern, or ``[N, T, T]`` when ``num_heads`` is
    given: the ``per_head=True`` patterns, one per key/value head (``num_kv_heads``,
    default ``num_heads``), repeated over the query heads that share it. ``is_causal``
    selects the causal table (random blocks from the past); the causal mask itself is
    left to the reference's ``is_causal``.

    Example:
      >>> import jax
      >>> m = block_sparse_mask(256, rng=jax.random.key(0), block_size=32,
      ...                       num_random_blocks=1, num_global_blocks=1)
      >>> m.shape, bool(m[0].all()), bool(m[:, 0].all())
      ((256, 256), True, True)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    b = _common.check_positive("block_size", block_size)
    r = _common.check_static_int("num_random_blocks", num_random_blocks)
    num_blocks = -(-seq_len // b)
    g = min(_common.check_static_int("num_global_blocks", num_global_blocks), num_blocks)
    num_patterns = 1
    if num_heads is not None:
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_kv_heads <= 0 or num_heads % num_kv_heads:
            raise ValueError(
                f"num_kv_heads={num_kv_heads} must be positive and divide num_heads={num_heads}"
            )
        num_patterns = num_kv_heads
    dense = masks_lib.block_mask_to_dense(
        block_level_mask(_check_rng(rng), num_blocks, g, r, is_causal, num_patterns),
        b,
        seq_len,
        seq_len,
    )
    if num_heads is None:
        return dense[0]
    return jnp.repeat(dense, num_heads // num_patterns, axis=0)


def block_level_mask(
    rng: jax.Array,
    num_blocks: int,
    num_global_blocks: int,
    num_random_blocks: int,
    is_causal: bool,
    num_patterns: int,
) -> jax.Array:
    """bool ``[P, Tb, Tb]``: the key blocks each query block reads (global rows read all).

    The one description of the pattern: :func:`block_sparse_mask` expands it to tokens
    for the reference, the ``"pallas"`` path hands it to splash attention as a
    :class:`~effjax.attention.masks.BlockPattern`.
    """
    g = num_global_blocks
    table, used = block_table(
        rng,
        num_blocks,
        num_global_blocks=g,
        num_random_blocks=num_random_blocks,
        is_causal=is_causal,
        num_patterns=num_patterns,
    )
    sparse_rows = masks_lib.block_indices_to_block_mask(jnp.where(used, table, -1), num_blocks)
    global_rows = jnp.ones((num_patterns, g, num_blocks), bool)
    return jnp.concatenate([global_rows, sparse_rows], axis=1)
