"""Reformer LSH attention (Kitaev, Kaiser & Levskaya, 2020, "Reformer: The Efficient Transformer").

Angular locality-sensitive hashing groups similar queries and keys: a random
rotation ``R [H, b/2]`` maps ``x`` to ``argmax([xR, -xR])``, one of ``b``
buckets (Andoni et al. 2015). Queries and keys are sorted by (bucket, position),
cut into equal chunks, and each query chunk attends to the key chunk at the same
index and the one before it. ``num_hashes`` rounds with independent rotations
are combined with their log-sum-exp weights, after dividing out keys that
several rounds share (the paper's ``N_{i,j}`` correction, computed exactly), so
the result is dense attention restricted to the union of the rounds' windows.

Cost: ``O(R T c H)`` time and memory for ``R`` rounds and chunk size ``c``
(never a ``[T, S]`` array); the chunk attention is rematerialised in the
backward pass.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from effjax.attention import _blockwise, _common

# The self-logit in shared-QK mode (the paper's "a token attends to itself only when it has
# nothing else"): far below any real logit, so it gets zero weight beside another key, yet
# finite and above MASK_VALUE, so a query with only itself to see still sees itself.
SELF_LOGIT = -1e5


def _check_num_buckets(num_buckets: int) -> int:
    if _common.check_static_int("num_buckets", num_buckets) < 2 or num_buckets % 2:
        raise ValueError(
            "num_buckets must be an even int >= 2 (angular LSH takes argmax over [xR, -xR]), "
            f"got {num_buckets!r}"
        )
    return int(num_buckets)


def _rotations(rng: jax.Array, num_hashes: int, head_dim: int, num_buckets: int) -> jax.Array:
    """Random rotations float32 [R, H, b/2]; round r uses fold_in(rng, r), so the rounds of
    ``num_hashes=n`` are the first n rounds of any larger ``num_hashes``."""
    return jnp.stack(
        [
            jax.random.normal(jax.random.fold_in(rng, r), (head_dim, num_buckets // 2))
            for r in range(num_hashes)
        ]
    )


def lsh_buckets(x: jax.Array, *, rng: jax.Array, num_hashes: int, num_buckets: int) -> jax.Array:
    """Angular-LSH bucket of every vector, one per hash round.

    ``bucket = argmax([x R_r, -x R_r])`` with ``R_r`` a Gaussian ``[H, b/2]`` matrix
    drawn from ``fold_in(rng, r)`` for round ``r`` (Kitaev et al. 2020, Sec. 3),
    shared by all heads. Queries and keys hashed with the same ``rng`` share
    rotations, which is what :func:`lsh_attention` does.

    Args:
      x: ``[B, T, N, H]`` queries or keys.
      rng: PRNG key.
      num_hashes: R, hash rounds.
      num_buckets: b, even, >= 2.

    Returns:
      int32 ``[B, T, N, R]`` in ``[0, b)``.

    Example:
      >>> import jax
      >>> x = jax.random.normal(jax.random.key(0), (1, 16, 2, 8))
      >>> lsh_buckets(x, rng=jax.random.key(1), num_hashes=3, num_buckets=4).shape
      (1, 16, 2, 3)
    """
    num_hashes = _common.check_positive("num_hashes", num_hashes)
    num_buckets = _check_num_buckets(num_buckets)
    if x.ndim != 4:
        raise ValueError(f"x must have rank 4 [B, T, N, H], got shape {x.shape}")
    rotations = _rotations(rng, num_hashes, x.shape[-1], num_buckets)
    projected = jnp.einsum(
        "btnh,rhf->btnrf", jax.lax.stop_gradient(x).astype(jnp.float32), rotations
    )
    # argmax over [xR, -xR] without building it: the first index of the largest entry, or
    # half + that of the most negative one. Plain max/min reductions and an index compare,
    # not argmax/argmin: XLA:CPU runs those as (value, index) reductions ~10x slower.
    half = num_buckets // 2
    top = jnp.max(projected, axis=-1, keepdims=True)
    bottom = jnp.min(projected, axis=-1, keepdims=True)
    upper = top >= -bottom
    index = jnp.arange(half, dtype=jnp.int32)
    first = jnp.min(jnp.where(projected == jnp.where(upper, top, bottom), index, half - 1), -1)
    return first + jnp.where(upper[..., 0], 0, half)


def chunk_layout(q_len: int, kv_len: int, chunk_size: int) -> tuple[int, int, int]:
    """``(num_chunks, query_chunk, key_chunk)``: ``ceil(max(T, S) / chunk_size)`` chunks that
    split the T sorted queries and the S sorted keys into equal parts of at most chunk_size."""
    num_chunks = -(-max(q_len, kv_len) // chunk_size)
    return num_chunks, -(-q_len // num_chunks), -(-kv_len // num_chunks)


def _shared_qk_inputs(query, key, value) -> tuple[jax.Array, jax.Array]:
    """Keys are the L2-normalised queries; value heads are repeated to the query heads,
    since each query head now has keys (and a sort order) of its own."""
    if key is not None and key is not query:
        raise ValueError(
            "with shared_qk=True, key must be None or the query itself (keys are the "
            f"normalised queries); got key of shape {jnp.shape(key)} for query {jnp.shape(query)}"
        )
    q32 = query.astype(jnp.float32)
    key = (q32 * jax.lax.rsqrt(jnp.sum(q32 * q32, axis=-1, keepdims=True) + 1e-12)).astype(
        query.dtype
    )
    if jnp.ndim(value) == 4 and jnp.ndim(query) == 4:
        num_heads, num_value_heads = query.shape[2], value.shape[2]
        if num_value_heads and num_value_heads != num_heads and num_heads % num_value_heads == 0:
            value = jnp.repeat(value, num_heads // num_value_heads, axis=2)
    return key, value


def _padding_bucket(buckets: jax.Array, padding_mask, num_buckets: int) -> jax.Array:
    """``buckets [B, ..., S]`` with padded positions (``padding_mask [B, S]`` False) moved
    to the extra bucket ``num_buckets``."""
    if padding_mask is None:
        return buckets
    real = padding_mask.reshape(padding_mask.shape[:1] + (1,) * (buckets.ndim - 2) + (-1,))
    return jnp.where(real, buckets, num_buckets)


def _sort_order(buckets: jax.Array, padded_len: int, num_buckets: int) -> jax.Array:
    """Permutation sorting ``[..., R, L]`` buckets by (bucket, position), padding last."""
    return _bucket_position_order(_common.pad_axis(buckets, -1, padded_len, value=num_buckets))


def _bucket_position_order(buckets: jax.Array) -> jax.Array:
    """``argsort`` of ``[..., L]`` buckets by (bucket, position), int32.

    The keys ``bucket * L + position`` are distinct, so sorting the keys alone and reading
    each one's position back (``key % L``) gives the same permutation as ``argsort``,
    whose sort carries an index operand and is ~8x slower on XLA:CPU.
    """
    length = buckets.shape[-1]
    positions = jax.lax.broadcasted_iota(jnp.int32, buckets.shape, buckets.ndim - 1)
    return jnp.sort(buckets.astype(jnp.int32) * length + positions, axis=-1) % length


class _Layout(NamedTuple):
    """Where every query and key goes: ``q_perm [B,K,G,R,Lq]`` / ``k_perm [B,K,R,Lk]`` list
    the positions in chunk order (``q_rows - 1`` / ``k_rows - 1`` = an empty slot),
    ``q_rank [B,K,G,R,*]`` the slot of each query position, ``q_ids`` / ``k_ids`` each
    position's chunk id (a key is in a query's window iff ``0 <= q_id - k_id <= 1``),
    ``look_back [B,K,R,n]`` whether chunk i's window holds chunk i - 1."""

    q_perm: jax.Array
    k_perm: jax.Array
    q_rank: jax.Array
    q_ids: jax.Array
    k_ids: jax.Array
    look_back: jax.Array
    num_chunks: int
    q_rows: int
    k_rows: int


def _sorted_layout(q_buckets, k_buckets, num_buckets, num_chunks, q_chunk, k_chunk, shared):
    """The paper's layout: sort by (bucket, position), cut into ``num_chunks`` equal chunks."""
    q_perm = _sort_order(q_buckets, num_chunks * q_chunk, num_buckets)
    k_perm = (
        q_perm[:, :, 0] if shared else _sort_order(k_buckets, num_chunks * k_chunk, num_buckets)
    )
    q_rank, k_rank = _inverse(q_perm), _inverse(k_perm)
    look_back = jnp.broadcast_to(jnp.arange(num_chunks) > 0, (*k_perm.shape[:-1], num_chunks))
    return _Layout(
        q_perm, k_perm, q_rank, q_rank // q_chunk, k_rank // k_chunk, look_back, num_chunks,
        q_perm.shape[-1], k_perm.shape[-1],
    )  # fmt: skip


def _items_below(buckets: jax.Array, num_values: int) -> jax.Array:
    """``[..., L]`` buckets -> ``[..., num_values]``: how many items lie in lower buckets."""
    values = jnp.arange(num_values).reshape((1,) * (buckets.ndim - 1) + (num_values, 1))
    return jnp.sum(buckets[..., None, :] < values, axis=-1)


def _bucket_chunks(buckets, below, starts, chunk: int, num_chunks: int):
    """One side of the strict layout: item ``j`` (in position order) of bucket ``b`` goes to
    slot ``starts[b] * chunk + j``. Returns (perm, slot of each position, chunk ids)."""
    length = buckets.shape[-1]
    positions = jax.lax.broadcasted_iota(jnp.int32, buckets.shape, buckets.ndim - 1)
    rank = _inverse(_bucket_position_order(buckets))
    in_bucket = rank - jnp.take_along_axis(below, buckets, axis=-1)
    start = jnp.take_along_axis(starts, buckets, axis=-1)
    slot = start * chunk + in_bucket
    perm = jnp.full((*buckets.shape[:-1], num_chunks * chunk), length, jnp.int32)
    perm = jnp.put_along_axis(perm, slot, positions, axis=-1, inplace=False)
    # + bucket: chunks of different buckets are never adjacent ids.
    return perm, slot, start + in_bucket // chunk + buckets


def _strict_layout(q_buckets, k_buckets, num_buckets, num_chunks, q_chunk, k_chunk, shared):
    """Strictly causal layout: every bucket fills whole chunks of its own, queries and keys on
    one chunk grid (bucket b has as many chunks as its queries or its keys need), and a
    chunk looks back only into its own bucket. A query's chunk then depends only on the
    tokens before it. Buckets are in ``[0, num_buckets]`` (the last one: padding)."""
    num_values = num_buckets + 1
    q_len, k_len = q_buckets.shape[-1], k_buckets.shape[-1]
    q_below = _items_below(q_buckets, num_values)  # [B,K,1,R,b]
    k_below = q_below[:, :, 0] if shared else _items_below(k_buckets, num_values)

    def chunks_needed(below, length, chunk):
        upper = jnp.concatenate([below[..., 1:], jnp.full_like(below[..., :1], length)], -1)
        return -(-(upper - below) // chunk)

    per_bucket = jnp.maximum(
        chunks_needed(q_below[:, :, 0], q_len, q_chunk), chunks_needed(k_below, k_len, k_chunk)
    )
    starts = jnp.cumsum(per_bucket, axis=-1) - per_bucket  # [B,K,R,b]
    # sum_b ceil(count_b / c) <= L / c + b: a static bound on the chunk count.
    total = (1 if shared else 2) * num_chunks + num_values
    q_perm, q_rank, q_ids = _bucket_chunks(q_buckets, q_below, starts[:, :, None], q_chunk, total)
    if shared:
        k_perm, k_ids = q_perm[:, :, 0], q_ids[:, :, 0]
    else:
        k_perm, _, k_ids = _bucket_chunks(k_buckets, k_below, starts, k_chunk, total)
    chunk_index = jnp.arange(total).reshape((1, 1, 1, total, 1))
    first = jnp.any(starts[..., None, :] == chunk_index, axis=-1)
    look_back = (jnp.arange(total) > 0).reshape((1, 1, 1, total)) & ~first
    return _Layout(q_perm, k_perm, q_rank, q_ids, k_ids, look_back, total, q_len + 1, k_len + 1)


def _inverse(perm: jax.Array) -> jax.Array:
    """Rank of each position under ``perm`` (along the last axis)."""
    ranks = jnp.broadcast_to(jnp.arange(perm.shape[-1], dtype=perm.dtype), perm.shape)
    return jnp.put_along_axis(jnp.zeros_like(perm), perm, ranks, axis=-1, inplace=False)


def _permute_rows(x: jax.Array, perm: jax.Array) -> jax.Array:
    """``x [..., 1, L, F]`` -> ``[..., R, L, F]``: the rows in each round's order ``perm
    [..., R, L]`` (one set of rows, R sort orders)."""
    return jnp.take_along_axis(x, perm[..., None], axis=-2)


def _with_look_back(x: jax.Array) -> jax.Array:
    """Appends the previous chunk's items after each chunk's own (chunk 0 gets the last
    chunk's, which the caller masks out): ``[n, c, ...] -> [n, 2c, ...]``."""
    return jnp.concatenate([x, jnp.roll(x, 1, axis=0)], axis=1)


def _attend_head_round(q, k, v, q_pos, k_pos, k_valid, look_back, rounds, **options):
    """One head and round: its n query blocks ``[n, G*c, ...]`` and key chunks ``[n, c', ...]``.

    Builds each chunk's window (own chunk + the previous one where ``look_back [n]``) here,
    inside the mapped block, so the doubled keys exist one head-round at a time.
    """
    key_chunk = k_valid.shape[1]
    look_back_ok = (jnp.arange(2 * key_chunk)[None, :] < key_chunk) | look_back[:, None]
    k_valid = _with_look_back(k_valid) & look_back_ok
    k, v, k_pos = _with_look_back(k), _with_look_back(v), _with_look_back(k_pos)
    return _chunk_attention(q, k, v, q_pos, k_pos, k_valid, rounds, **options)


def _chunk_attention(
    q, k, v, q_pos, k_pos, k_valid, rounds, *, scale, is_causal, shared_qk, offset
):
    """Softmax attention of every query block to its key window, all rounds and chunks at once.

    Shapes, with Z = B*K*R*n windows, M = G*c queries and D = 2c' keys per window:
      q [Z,M,H], k [Z,D,H], v [Z,D,Hv], q_pos [Z,M], k_pos / k_valid [Z,D];
      rounds [Z,M,D]: how many rounds put each pair in one window (None with one round,
      see :func:`_rounds_sharing`). Flat 3-d batches keep XLA's CPU dot on its fast path.
    Returns the window outputs [Z,M,Hv] and their log-sum-exps [Z,M].
    """
    logits = jnp.einsum("zmh,zdh->zmd", q.astype(jnp.float32), k.astype(jnp.float32))
    logits = logits * jnp.float32(scale)
    key_pos, query_pos = k_pos[:, None, :], q_pos[:, :, None]
    mask = k_valid[:, None, :]
    if is_causal:
        mask = mask & (key_pos <= query_pos + offset)
    if shared_qk:
        logits = jnp.where(key_pos == query_pos, jnp.float32(SELF_LOGIT), logits)
    if rounds is not None:
        # A key that several rounds put in this query's window would be counted once per
        # round by the log-sum-exp combination; subtracting log(count) counts it once.
        logits = logits - jnp.log(jnp.maximum(rounds, 1).astype(jnp.float32))
    unnormalised, inverse, lse = _blockwise.unnormalised_softmax(logits, mask)
    out = jnp.einsum("zmd,zdh->zmh", unnormalised, v.astype(jnp.float32))
    return out * inverse[..., None], lse


def _map_over_blocks(fn, num_blocks: int, *args):
    """``fn`` over ``num_blocks`` consecutive groups of chunks, one group at a time and
    rematerialised in the backward pass: one group's logits stay in cache (a single pass
    over all rounds' logits is several times slower on CPU) and memory holds only one."""

    def split(x):
        return None if x is None else x.reshape((num_blocks, -1, *x.shape[1:]))

    outs = jax.lax.map(lambda blocks: jax.checkpoint(fn)(*blocks), tuple(split(a) for a in args))
    return tuple(o.reshape((-1, *o.shape[2:])) for o in outs)


def lsh_attention(
    query: jax.Array,
    key: jax.Array | None,
    value: jax.Array,
    *,
    rng: jax.Array,
    num_hashes: int,
    num_buckets: int,
    chunk_size: int,
    shared_qk: bool = False,
    is_causal: bool = False,
    padding_mask: jax.Array | None = None,
    scale: float | None = None,
    strict_causal: bool = True,
) -> jax.Array:
    r"""Reformer LSH attention (Kitaev et al. 2020, Sec. 3).

    For each hash round r (rotations from ``fold_in(rng, r)``, see
    :func:`lsh_buckets`), queries and keys are sorted by (bucket, position) and
    split into ``n = ceil(max(T, S) / chunk_size)`` chunks of
    ``ceil(T / n)`` queries and ``ceil(S / n)`` keys. Query chunk i attends to key
    chunks i and i - 1 (no wrap-around). Round outputs ``o_r`` with log-sum-exps
    ``l_r`` are combined as :math:`\sum_r \mathrm{softmax}_r(l_r)\, o_r`, each logit
    first lowered by ``log`` of the number of rounds whose window holds that
    query-key pair, so the result equals dense attention masked to the union of
    all rounds' windows (and to causality/padding). With ``chunk_size >= max(T, S)``
    every query sees every key: exactly dense attention.

    Padded keys (``padding_mask`` False) are hashed into a bucket of their own, sorted
    after every real key, so their content changes no output.

    Shared-QK mode (the paper's): keys are the L2-normalised queries, queries and
    keys share one sort, and a token's own logit is replaced by a large negative
    finite value, so a token attends to itself only when nothing else is visible.

    Args:
      query: ``[B, T, N, H]``.
      key: ``[B, S, K, H]`` (K divides N); ``None`` or ``query`` when ``shared_qk``.
      value: ``[B, S, K, Hv]``.
      rng: PRNG key of the random rotations; the same key gives the same output.
      num_hashes: R >= 1 hash rounds.
      num_buckets: b, even and >= 2 (a common choice is about ``2 T / chunk_size``).
      chunk_size: at most this many sorted queries per chunk (> 0).
      shared_qk: shared query-key attention as above.
      is_causal: bottom-right aligned causal mask (query t sees keys <= t + S - T).
      padding_mask: bool ``[B, S]``, True = a real key.
      scale: logit scale, default ``1 / sqrt(H)``.
      strict_causal: with ``is_causal`` and more than one chunk, lay the chunks out so
        that no later token can change an earlier output (default): each bucket fills
        whole chunks of its own, in position order, queries and keys on one chunk grid,
        and a query sees the keys of its bucket in its own and the previous chunk of that
        bucket (so a token's chunk depends only on the tokens before it). This costs up
        to ``(2n + b + 1) / n`` times the chunks (``n + b + 1`` with shared QK). False
        keeps the paper's layout, where the causal mask hides later keys but later
        tokens' hashes still move earlier queries between chunks: redrawing the last 64
        of 128 random tokens (2 hashes, 8 buckets, chunk 32) changed outputs before them
        by up to 0.49 (0.77 with shared QK; tests/attention/test_lsh.py measures it).

    Returns:
      ``[B, T, N, Hv]`` in ``value.dtype``; float32 logits and softmax. A query whose
      windows hold no visible key returns zeros.

    Raises:
      ValueError: bad shapes; num_hashes or chunk_size not a positive int; num_buckets
        odd or < 2; with ``shared_qk`` a key other than None or the query; without it,
        key None.

    Example:
      >>> import jax
      >>> from effjax.attention import lsh_attention
      >>> q = k = v = jax.random.normal(jax.random.key(0), (1, 64, 2, 8))
      >>> out = lsh_attention(q, k, v, rng=jax.random.key(1), num_hashes=2,
      ...                     num_buckets=4, chunk_size=16, is_causal=True)
      >>> out.shape
      (1, 64, 2, 8)
    """
    is_causal = _common.check_static_bool("is_causal", is_causal)
    num_hashes = _common.check_positive("num_hashes", num_hashes)
    chunk_size = _common.check_positive("chunk_size", chunk_size)
    num_buckets = _check_num_buckets(num_buckets)
    key, value, dims, padding_mask = _checked_inputs(query, key, value, padding_mask, shared_qk)
    scale = _common.resolve_scale(scale, dims.head_dim)
    if dims.empty:
        return _common.zeros_output(dims, value)
    num_chunks, q_chunk, k_chunk = chunk_layout(dims.q_len, dims.kv_len, chunk_size)
    # One chunk holds everything: no hash can move a token out of it, so it is causal as is.
    strict = is_causal and strict_causal and num_chunks > 1
    if strict and dims.groups > 1:
        # Each query head of a group has its own chunk grid: give it its own keys.
        key, value = (jnp.repeat(x, dims.groups, axis=2) for x in (key, value))
        dims = _common.check_qkv(query, key, value)
    q_buckets, k_buckets = _hash_buckets(
        query, key, dims, padding_mask, shared_qk,
        rng=rng, num_hashes=num_hashes, num_buckets=num_buckets,
    )  # fmt: skip
    make_layout = _strict_layout if strict else _sorted_layout
    layout = make_layout(q_buckets, k_buckets, num_buckets, num_chunks, q_chunk, k_chunk, shared_qk)
    windows = _Windows(
        dims.batch * dims.num_kv_heads * num_hashes * layout.num_chunks,
        layout.num_chunks, q_chunk, k_chunk,
    )  # fmt: skip
    attend = functools.partial(
        _attend_head_round,
        scale=scale,
        is_causal=is_causal,
        shared_qk=shared_qk,
        offset=dims.kv_len - dims.q_len,
    )
    out, lse = _map_over_blocks(
        attend,
        windows.count // windows.num_chunks,
        *_sorted_qkv(query, key, value, dims, layout, windows),
        windows.queries(layout.q_perm),
        windows.keys(layout.k_perm),
        _sorted_key_validity(dims, padding_mask, layout, windows),
        layout.look_back.reshape(windows.count),
        _rounds_sharing(*_sorted_chunk_ids(layout, windows, num_hashes, num_buckets), windows),
    )
    return _combine_rounds(out, lse, layout, windows, dims).astype(value.dtype)


def _checked_inputs(query, key, value, padding_mask, shared_qk: bool):
    """``(key, value, dims, padding_mask)`` validated; with ``shared_qk``, the keys made
    from the queries."""
    if shared_qk:
        key, value = _shared_qk_inputs(query, key, value)
    elif key is None:
        raise ValueError("key is None: pass key [B, S, K, H], or shared_qk=True to use the query")
    dims = _common.check_qkv(query, key, value)
    return key, value, dims, _common.check_padding_mask(padding_mask, dims)


def _hash_buckets(query, key, dims, padding_mask, shared_qk: bool, **hash_options):
    """Query buckets ``[B, K, G, R, T]`` and key buckets ``[B, K, R, S]``.

    Padded keys get a bucket of their own, sorted after the real ones (as in trax and
    transformers): their content must not move real keys between chunks.
    """
    q_buckets = lsh_buckets(query, **hash_options)
    q_buckets = _common.group_heads(q_buckets, dims.num_kv_heads).transpose(0, 2, 3, 4, 1)
    num_buckets = hash_options["num_buckets"]
    if shared_qk:  # K = N, G = 1 and identical buckets: one sort serves both sides.
        q_buckets = _padding_bucket(q_buckets, padding_mask, num_buckets)
        return q_buckets, q_buckets[:, :, 0]
    k_buckets = lsh_buckets(key, **hash_options).transpose(0, 2, 3, 1)
    return q_buckets, _padding_bucket(k_buckets, padding_mask, num_buckets)


class _Windows(NamedTuple):
    """The Z = B*K*R*n attention windows: window z holds the G*c sorted queries of chunk
    n (all G query heads of a key head) and the c' sorted keys of that chunk."""

    count: int
    num_chunks: int
    q_chunk: int
    k_chunk: int

    def queries(self, x: jax.Array) -> jax.Array:
        """``[B, K, G, R, n*c, ...]`` -> ``[Z, G*c, ...]``."""
        b, kh, g, r = x.shape[:4]
        x = x.reshape((b, kh, g, r, self.num_chunks, self.q_chunk, *x.shape[5:]))
        x = jnp.moveaxis(x, 2, 4)  # [B,K,R,n,G,c,...]
        return x.reshape((self.count, g * self.q_chunk, *x.shape[6:]))

    def keys(self, x: jax.Array) -> jax.Array:
        """``[B, K, R, n*c', ...]`` -> ``[Z, c', ...]``."""
        return x.reshape((self.count, self.k_chunk, *x.shape[4:]))

    def unsorted_queries(self, x: jax.Array, layout: _Layout) -> jax.Array:
        """Inverse of :meth:`queries`, then each round's sort undone: ``[Z, G*c, ...]`` ->
        ``[B, K, G, R, n*c, ...]`` in position order."""
        batch, kv_heads, groups, num_hashes = layout.q_perm.shape[:4]
        rest = x.shape[2:]
        x = x.reshape((batch, kv_heads, num_hashes, self.num_chunks, groups, self.q_chunk, *rest))
        x = jnp.moveaxis(x, 4, 2).reshape((*layout.q_perm.shape, *rest))
        rank = layout.q_rank.reshape(layout.q_rank.shape + (1,) * len(rest))
        return jnp.take_along_axis(x, rank, axis=4)


def _sorted_qkv(query, key, value, dims, layout: _Layout, windows: _Windows):
    """Queries ``[Z, G*c, H]``, keys ``[Z, c', H]`` and values ``[Z, c', Hv]`` of every
    window, in each round's sorted order."""
    q = _common.group_heads(query, dims.num_kv_heads).transpose(0, 2, 3, 1, 4)
    q = _common.pad_axis(q, -2, layout.q_rows)[:, :, :, None]
    k, v = (
        _common.pad_axis(x.transpose(0, 2, 1, 3), -2, layout.k_rows)[:, :, None]
        for x in (key, value)
    )
    return (
        windows.queries(_permute_rows(q, layout.q_perm)),
        windows.keys(_permute_rows(k, layout.k_perm)),
        windows.keys(_permute_rows(v, layout.k_perm)),
    )


def _sorted_key_validity(dims, padding_mask, layout: _Layout, windows: _Windows) -> jax.Array:
    """bool ``[Z, c']``: the slot holds a real key (not an empty slot, not padding)."""
    key_valid = jnp.arange(layout.k_rows) < dims.kv_len
    key_valid = jnp.broadcast_to(key_valid[None], (dims.batch, layout.k_rows))
    if padding_mask is not None:
        key_valid = key_valid & _common.pad_axis(padding_mask, 1, layout.k_rows, value=False)
    return windows.keys(jnp.take_along_axis(key_valid[:, None, None], layout.k_perm, axis=-1))


def _sorted_chunk_ids(layout: _Layout, windows: _Windows, num_hashes: int, num_buckets: int):
    """The chunk of every window item in every round, ``q_chunks [Z, G*c, R]`` and
    ``k_chunks [Z, c', R]``, for the count of rounds sharing a key; ``(None, None)`` with
    one round."""
    if num_hashes == 1:
        return None, None
    q_ids = _common.pad_axis(layout.q_ids, -1, layout.q_rows)
    k_ids = _common.pad_axis(layout.k_ids, -1, layout.k_rows)
    # [..., R, L, R]: row l of round r lists item perm_r[l]'s chunk in every round.
    q_chunks = _permute_rows(jnp.swapaxes(q_ids, -1, -2)[:, :, :, None], layout.q_perm)
    k_chunks = _permute_rows(jnp.swapaxes(k_ids, -1, -2)[:, :, None], layout.k_perm)
    # Narrow chunk ids make the pairwise count (R compares per logit) cheaper.
    small = layout.num_chunks + num_buckets < np.iinfo(np.int16).max
    ids = jnp.int16 if small else jnp.int32
    return windows.queries(q_chunks).astype(ids), windows.keys(k_chunks).astype(ids)


def _rounds_sharing(q_chunks, k_chunks, windows: _Windows) -> jax.Array | None:
    """uint8 ``[Z, G*c, 2c']``: in how many rounds each query of a window and each key of
    its window (own chunk, then the previous one) share a window, from the chunk ids
    ``q_chunks [Z, G*c, R]`` and ``k_chunks [Z, c', R]``; None with one round.

    Counted here, once for all windows, rather than per logit inside the mapped blocks,
    where XLA:CPU ran the R compares ~3x slower; uint8 (up to 255 rounds) keeps it a
    quarter of the logits' size.
    """
    if q_chunks is None:
        return None
    num_rounds = q_chunks.shape[-1]
    q_ids, k_ids = jnp.moveaxis(q_chunks, -1, 0), jnp.moveaxis(k_chunks, -1, 0)
    # Each head-round's n windows, k_ids [R, Z/n, n, c'] with the previous chunk rolled in.
    k_ids = k_ids.reshape(num_rounds, -1, windows.num_chunks, windows.k_chunk)
    k_ids = jnp.concatenate([k_ids, jnp.roll(k_ids, 1, axis=2)], axis=-1)
    k_ids = k_ids.reshape(num_rounds, windows.count, 2 * windows.k_chunk)
    unsigned = jnp.uint16 if q_ids.dtype == jnp.int16 else jnp.uint32
    count = jnp.uint8 if num_rounds <= np.iinfo(np.uint8).max else jnp.int32
    # Unsigned view: negative gaps wrap to large values, so one compare tests 0 <= gap <= 1.
    return sum(
        ((q_ids[r][:, :, None] - k_ids[r][:, None, :]).astype(unsigned) <= 1).astype(count)
        for r in range(num_rounds)
    )


def _combine_rounds(out, lse, layout: _Layout, windows: _Windows, dims) -> jax.Array:
    """Window outputs ``[Z, G*c, Hv]`` and log-sum-exps ``[Z, G*c]`` -> ``[B, T, N, Hv]``:
    back to positions, then the rounds weighted by the softmax of their log-sum-exps."""
    out = windows.unsorted_queries(out, layout)
    weights = jax.nn.softmax(windows.unsorted_queries(lse, layout), axis=3)
    # A sum of R products, not jnp.sum over the rounds axis: XLA:CPU fuses that reduction
    # with the softmax and ran it ~50x slower (431 vs 8 ms at B=1, N=8, R=4, T=4096).
    rounds = range(out.shape[3])
    out = sum(out[:, :, :, r] * weights[:, :, :, r, :, None] for r in rounds)[:, :, :, : dims.q_len]
    return _common.ungroup_heads(out.transpose(0, 3, 1, 2, 4))
