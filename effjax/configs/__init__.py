"""Example experiment configs shipped with effjax, addressable by name.

Each module here defines ``config``, an :class:`~effjax.train.config.ExperimentConfig`.
Run one by name with ``effjax train smoke --workdir runs/smoke``; list them with
``effjax train --list-configs``; copy one as the start of your own config file.
"""
