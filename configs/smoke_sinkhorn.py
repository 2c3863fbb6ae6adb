"""The smoke model (a one-layer ListOps encoder) with sinkhorn attention, default options.

effjax train configs/smoke_sinkhorn.py --workdir /tmp/effjax-smoke-sinkhorn
"""

import dataclasses

from effjax.configs.smoke import config as smoke

config = dataclasses.replace(
    smoke, name="smoke_sinkhorn", model=dataclasses.replace(smoke.model, attention="sinkhorn")
)
