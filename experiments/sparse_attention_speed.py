"""Speed and compiled memory of local / global_local / block_sparse vs dense attention on CPU.

Throwaway measurement for issue 3 (the lead's ``effjax bench`` is the reference harness):
forward time (median of timed runs, dense timed in the same process) at T=4096, B=1, N=8,
H=64, float32, and XLA compiled memory (temp + arguments) at T=4096 and T=16384, forward
and forward+backward. Useful FLOPs = 4 * B * N * H * nnz(equivalent mask).

  python experiments/sparse_attention_speed.py [--repeats 5] [--skip-memory]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import effjax.attention as ea

B, N, H = 1, 8, 64
NUM_GLOBAL = 16  # Longformer: global tokens at positions 0..15 (a [CLS]-plus-question prefix)


def prefix_globals(seq_len: int) -> jax.Array:
    return jnp.arange(seq_len)[None] < NUM_GLOBAL


def variants(seq_len: int):
    rng = jax.random.key(1)
    return {
        "dense": (lambda q, k, v: jax.nn.dot_product_attention(q, k, v), None),
        "local (128,128)": (
            lambda q, k, v: ea.local_attention(q, k, v, window_size=(128, 128)),
            lambda: ea.local_mask(seq_len, seq_len, (128, 128)),
        ),
        f"global_local (128,128) +{NUM_GLOBAL} global": (
            lambda q, k, v: ea.global_local_attention(
                q,
                k,
                v,
                window_size=(128, 128),
                global_mask=prefix_globals(q.shape[1]),
                max_global_tokens=NUM_GLOBAL,
            ),
            lambda: ea.global_local_mask(prefix_globals(seq_len), (128, 128))[0, 0],
        ),
        "block_sparse b=64 r=3 g=2": (
            lambda q, k, v: ea.block_sparse_attention(
                q, k, v, rng=rng, block_size=64, num_random_blocks=3, num_global_blocks=2
            ),
            lambda: ea.block_sparse_mask(seq_len, rng=rng, block_size=64),
        ),
    }


def median_time(fn, args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def compiled_bytes(fn, seq_len: int) -> int:
    spec = jax.ShapeDtypeStruct((B, seq_len, N, H), jnp.float32)
    stats = jax.jit(fn).lower(spec, spec, spec).compile().memory_analysis()
    return stats.temp_size_in_bytes + stats.argument_size_in_bytes


def fwd_bwd(fn):
    return jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v)), argnums=(0, 1, 2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    t = args.seq_len
    keys = jax.random.split(jax.random.key(0), 3)
    qkv = [jax.random.normal(k, (B, t, N, H), jnp.float32) for k in keys]
    dense_flops = 4 * B * N * H * t * t
    dense_time = None
    for name, (fn, mask_fn) in variants(t).items():
        seconds = median_time(jax.jit(fn), qkv, args.repeats)
        flops = dense_flops if mask_fn is None else 4 * B * N * H * int(np.sum(mask_fn()))
        dense_time = dense_time or seconds
        speedup = dense_time / seconds
        efficiency = speedup / (dense_flops / flops)
        line = (
            f"{name:40s} fwd {seconds * 1e3:8.1f} ms  speedup {speedup:5.2f}x  "
            f"useful GFLOP {flops / 1e9:6.2f}  sparsity efficiency {efficiency:4.2f}"
        )
        if not args.skip_memory:
            growth = []
            for mode_fn in (fn, fwd_bwd(fn)):
                small, large = compiled_bytes(mode_fn, t), compiled_bytes(mode_fn, 4 * t)
                growth.append(f"{small / 2**20:.0f}->{large / 2**20:.0f} MiB x{large / small:.2f}")
            line += f"  memory fwd {growth[0]}  fwd+bwd {growth[1]}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
