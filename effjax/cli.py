"""The effjax command: benchmark attention variants, train from a config."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from effjax import __version__
from effjax.train.cli import add_train_parser


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps descriptions as written and appends each option's default when it has one.

    Unlike ``argparse.ArgumentDefaultsHelpFormatter``, a default of None or False (a flag
    that is off, a value computed at run time) is not printed: its help says what happens.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "%(default)" not in text and default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _csv(cast):
    def parse(text: str):
        try:
            return tuple(cast(x) for x in text.split(",") if x)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"expected comma-separated values: {err}") from None

    return parse


_BENCH_DESCRIPTION = """\
effjax bench: forward and forward+backward time (median, min) and XLA compiled memory
of attention variants over a length sweep, each against jax.nn.dot_product_attention
measured in the same run. Writes DIR/results.jsonl (one record per measurement),
DIR/results.md (tables and the claims checked) and PNG plots of time and memory.
"""


def _add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="time and memory of attention variants against sequence length",
        description=_BENCH_DESCRIPTION,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--variants",
        type=_csv(str),
        default=None,
        metavar="A,B",
        help="comma-separated registry names (default: every registered variant)",
    )
    p.add_argument(
        "--seq-lens",
        type=_csv(int),
        default=None,
        metavar="T1,T2",
        help="comma-separated lengths (default: 256..16384 on CPU, 256..65536 on GPU/TPU, "
        "256,512,1024 with --quick)",
    )
    p.add_argument(
        "--mode",
        choices=("fwd", "fwd_bwd", "both"),
        default="both",
        help="forward only, forward+backward, or both",
    )
    p.add_argument("--batch", type=int, default=1, help="batch size B")
    p.add_argument("--heads", type=int, default=8, help="attention heads N")
    p.add_argument("--head-dim", type=int, default=64, help="head dimension H")
    p.add_argument(
        "--dtype",
        default="float32",
        help="dtype of query, key and value: float32, bfloat16 or float16",
    )
    p.add_argument(
        "--layers",
        action="store_true",
        help="also time whole encoder layers, and the training step of deep models under "
        "remat / bfloat16 / Switch experts / the reversible stack (compiled memory)",
    )
    p.add_argument(
        "--training-layers",
        type=int,
        default=12,
        help="layers of the models in the --layers training rows (0: none)",
    )
    p.add_argument(
        "--peers",
        action="store_true",
        help="also time Hugging Face PyTorch BigBird/Longformer/Reformer beside effjax "
        "(needs the peers extra: torch)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="short lengths and few repeats (about a minute on CPU)",
    )
    p.add_argument(
        "--memory-limit-gb",
        type=float,
        default=None,
        metavar="GB",
        help="record as OOM, without running, programs whose compiled footprint is "
        "larger (default: 40%% of physical memory on CPU, no limit elsewhere)",
    )
    p.add_argument(
        "--max-run-seq-len",
        type=int,
        default=None,
        metavar="T",
        help="only compile (for the compiled-memory figure, without running) lengths above T",
    )
    p.add_argument("--out", default="bench-out", metavar="DIR", help="output directory")


def _physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def bench_config(args, backend: str):
    """The run ``effjax bench ARGS`` makes on ``backend`` ("cpu", "gpu" or "tpu"): on a
    GPU or TPU, unless told otherwise, the accelerator sweep (lengths to 65536, no
    compiled-memory cap: an out-of-memory length is recorded, not fatal)."""
    from effjax.attention import registry
    from effjax.bench import runner

    on_cpu = backend == "cpu"
    seq_lens = args.seq_lens or runner.default_seq_lens(backend, quick=args.quick)
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
        max_run_seq_len=args.max_run_seq_len,
        layers=args.layers,
        training_layers=args.training_layers,
        peers=args.peers,
        **quick,
    )


def _run_bench(args, argv: Sequence[str]) -> int:
    import jax

    from effjax.bench import run_benchmark

    config = bench_config(args, jax.default_backend())
    config.validate()
    run_benchmark(config, args.out, command="effjax " + shlex.join(argv))
    print(f"wrote {args.out}/results.jsonl, results.md and plots")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The ``effjax`` argument parser with its ``bench`` and ``train`` subcommands."""
    parser = argparse.ArgumentParser(
        prog="effjax",
        description=__doc__,
        epilog="Run 'effjax COMMAND --help' for a command's options.",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"effjax {__version__}")
    subparsers = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="bench or train"
    )
    _add_bench_parser(subparsers)
    add_train_parser(subparsers, formatter_class=HelpFormatter)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``effjax`` console command; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "train":
        return args.func(args)
    try:
        return _run_bench(args, argv)
    except ValueError as err:
        parser.exit(2, f"effjax bench: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
