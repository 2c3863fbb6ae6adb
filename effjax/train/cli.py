"""``effjax train CONFIG --workdir DIR [--steps N]``.

The subcommand of the ``effjax`` command (effjax/cli.py adds it with
:func:`add_train_parser`); run it as ``effjax train ...`` or
``python -m effjax.cli train ...``. Rerunning the same command resumes from the work
directory's last checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys


def add_train_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``train`` subcommand to an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "train",
        help="train a model from a config file (resumes from --workdir)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="path of a config file, e.g. configs/smoke.py")
    parser.add_argument("--workdir", required=True, help="checkpoints, metrics and logs go here")
    parser.add_argument("--steps", type=int, default=None, help="override run.num_steps")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run_train)
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Runs ``effjax train``; returns the exit status.

    0 when training completed; 128 + signal number when SIGINT/SIGTERM stopped it
    after saving a checkpoint; 2 with a message on stderr for a bad config, missing
    data or an incompatible work directory (nothing written).
    """
    import dataclasses

    from effjax.train import loop, tasks
    from effjax.train.config import load_config

    try:
        config = load_config(args.config).with_steps(args.steps)
        if args.no_progress:
            config = config.replace(run=dataclasses.replace(config.run, progress=False))
        data = tasks.build_data(config)
        result = loop.train(config, args.workdir, model=tasks.build_model(config), data=data)
    except ValueError as error:
        print(f"effjax train: error: {error}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in result.items() if k != "state"}
    print(json.dumps(summary))
    return 128 + int(result["stopped"]) if result["stopped"] else 0
