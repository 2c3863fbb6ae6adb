"""effjax train CONFIG --workdir DIR: train a model from a config, resuming from DIR.

CONFIG is the path of a config file (configs/smoke.py) or the name of a config shipped
with effjax (smoke, listops; see --list-configs). Metrics go to DIR/metrics.jsonl and
TensorBoard, checkpoints to DIR/checkpoints. Rerunning the same command resumes from the
last checkpoint; rerunning a finished run changes nothing. Progress goes to stderr: a bar
on a terminal, else one line per log interval. Exit status: 0 when training completed,
128 + signal number when SIGINT/SIGTERM stopped it after saving a checkpoint (it says so
on stderr), 2 for a bad argument, config, missing data or an unusable or incompatible
work directory (nothing written).

On a pod, run the same command on every host: JAX's cluster detection (Cloud TPU,
Slurm, Open MPI, Kubernetes) joins the processes, or pass --coordinator-address
HOST:PORT --num-processes P --process-id I (effjax.train.distributed). The work
directory must be one that every host reaches (a shared file system, GCS).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_train_parser(
    subparsers, formatter_class: type[argparse.HelpFormatter] = argparse.RawDescriptionHelpFormatter
) -> argparse.ArgumentParser:
    """Adds the ``train`` subcommand to an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "train",
        help="train a model from a config file or a packaged config (resumes from --workdir)",
        description=__doc__,
        formatter_class=formatter_class,
    )
    parser.add_argument(
        "config",
        nargs="?",
        help="a config file (configs/smoke.py) or a packaged config's name (smoke)",
    )
    parser.add_argument(
        "--workdir", metavar="DIR", help="checkpoints, metrics and logs go here (required)"
    )
    parser.add_argument(
        "--steps",
        type=_positive_int,
        default=None,
        help="train this many steps (default: run.num_steps)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--coordinator-address",
        metavar="HOST:PORT",
        type=_coordinator_address,
        help="multi-process run: process 0's address and a free port (with --num-processes "
        "and --process-id; default: what JAX detects of the cluster, else one process)",
    )
    parser.add_argument(
        "--num-processes", type=_positive_int, metavar="P", help="processes in the run"
    )
    parser.add_argument(
        "--process-id", type=_non_negative_int, metavar="I", help="this process, 0..P-1"
    )
    parser.add_argument(
        "--list-configs", action="store_true", help="list the packaged configs and exit"
    )
    parser.set_defaults(func=run_train, parser=parser)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return int(text)


def _coordinator_address(text: str) -> str:
    from effjax.train.distributed import parse_coordinator_address

    try:
        return parse_coordinator_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            str(error).removeprefix("--coordinator-address ")
        ) from None


def workdir_problem(workdir: str) -> str | None:
    """Why ``workdir`` cannot hold a run (not a directory, or not writable), else None."""
    path = Path(workdir)
    if path.exists() and not path.is_dir():
        return f"--workdir {workdir} exists and is not a directory"
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        return f"--workdir {workdir}: {existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--workdir {workdir}: {existing} is not writable"
    return None


def run_train(args: argparse.Namespace) -> int:
    """Runs ``effjax train``; returns the exit status.

    0 when training completed; 128 + signal number when SIGINT/SIGTERM stopped it
    after saving a checkpoint; 2 with a message on stderr for a bad config, missing
    data or an incompatible work directory (nothing written).
    """
    import dataclasses

    from effjax.train.config import load_config, packaged_configs

    if args.list_configs:
        for name, summary in packaged_configs().items():
            print(f"{name:12s} {summary}")
        return 0
    if args.config is None or args.workdir is None:
        args.parser.error("CONFIG and --workdir are required (or --list-configs)")
    problem = workdir_problem(args.workdir)
    if problem:
        print(f"effjax train: error: {problem}", file=sys.stderr)
        return 2

    from effjax.train import distributed, loop, tasks

    try:
        # Before anything touches a device: JAX then sees every process's devices.
        distributed.initialize(args.coordinator_address, args.num_processes, args.process_id)
        config = load_config(args.config).with_steps(args.steps)
        if args.no_progress:
            config = config.replace(run=dataclasses.replace(config.run, progress=False))
        data = tasks.build_data(config)
        result = loop.train(
            config,
            args.workdir,
            model=tasks.build_model(config),
            data=data,
            loss_fn=tasks.loss_for(config),
            eval_model=tasks.build_eval_model(config),
        )
    except ValueError as error:
        print(f"effjax train: error: {error}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in result.items() if k != "state"}
    print(json.dumps(summary))
    return 128 + int(result["stopped"]) if result["stopped"] else 0
