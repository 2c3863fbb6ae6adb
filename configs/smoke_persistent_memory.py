"""The smoke model (a one-layer ListOps encoder) with persistent_memory attention, default options.

effjax train configs/smoke_persistent_memory.py --workdir /tmp/effjax-smoke-persistent_memory
"""

import dataclasses

from effjax.configs.smoke import config as smoke

config = dataclasses.replace(
    smoke,
    name="smoke_persistent_memory",
    model=dataclasses.replace(smoke.model, attention="persistent_memory"),
)
