"""The ``effjax`` command: ``effjax bench ...`` and ``effjax train CONFIG --workdir DIR``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from effjax.train.cli import add_train_parser


def _csv(cast):
    def parse(text: str):
        try:
            return tuple(cast(x) for x in text.split(",") if x)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected comma-separated values: {err}") from None

    return parse


def _add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time and memory of attention variants against sequence length",
        description="Measures forward and forward+backward time (median, min) and XLA "
        "compiled memory of every registered attention variant over a length sweep, "
        "against jax.nn.dot_product_attention in the same run.",
    )
    p.add_argument("--variants", type=_csv(str), default=None, help="default: all registered")
    p.add_argument(
        "--seq-lens",
        type=_csv(int),
        default=None,
        help="default: 256..16384 on CPU, 256..65536 on GPU/TPU",
    )
    p.add_argument("--mode", choices=("fwd", "fwd_bwd", "both"), default="both")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--layers", action="store_true", help="also whole encoder layers")
    p.add_argument(
        "--peers",
        action="store_true",
        help="also Hugging Face PyTorch BigBird/Longformer/Reformer beside effjax "
        "(needs the peers extra: torch)",
    )
    p.add_argument("--quick", action="store_true", help="short lengths, few repeats (~1 min)")
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        help="skip (record as OOM) programs whose compiled footprint is larger; "
        "default on CPU: 40%% of physical memory",
    )
    p.add_argument("--out", default="bench-out", help="output directory")


def _physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _bench_config(args):
    import jax

    from effjax.attention import registry
    from effjax.bench import runner

    on_cpu = jax.default_backend() == "cpu"
    if args.seq_lens:
        seq_lens = args.seq_lens
    elif args.quick:
        seq_lens = runner.QUICK_SEQ_LENS
    else:
        seq_lens = runner.CPU_SEQ_LENS if on_cpu else runner.ACCELERATOR_SEQ_LENS
    limit = args.memory_limit_gb
    if limit is not None:
        limit_bytes = int(limit * 2**30)
    else:
        physical = _physical_memory_bytes() if on_cpu else None
        limit_bytes = int(0.4 * physical) if physical else None
    quick = {"min_repeats": 2, "max_repeats": 5, "min_time_s": 0.1} if args.quick else {}
    return runner.BenchConfig(
        variants=args.variants or registry.available(),
        seq_lens=seq_lens,
        modes=runner.MODES if args.mode == "both" else (args.mode,),
        batch=args.batch,
        heads=args.heads,
        head_dim=args.head_dim,
        dtype=args.dtype,
        memory_limit_bytes=limit_bytes,
        layers=args.layers,
        peers=args.peers,
        **quick,
    )


def _run_bench(args, argv: Sequence[str]) -> int:
    from effjax.bench import run_benchmark

    config = _bench_config(args)
    config.validate()
    run_benchmark(config, args.out, command="effjax " + shlex.join(argv))
    print(f"wrote {args.out}/results.jsonl, results.md and plots")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``effjax`` console command."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="effjax", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_bench_parser(subparsers)
    add_train_parser(subparsers)
    args = parser.parse_args(argv)
    if args.command == "train":
        return args.func(args)
    try:
        return _run_bench(args, argv)
    except ValueError as err:
        parser.exit(2, f"effjax bench: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
