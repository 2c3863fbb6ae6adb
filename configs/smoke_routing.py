"""The smoke model (a one-layer ListOps encoder) with routing attention, default options.

effjax train configs/smoke_routing.py --workdir /tmp/effjax-smoke-routing
"""

import dataclasses

from effjax.configs.smoke import config as smoke

config = dataclasses.replace(
    smoke, name="smoke_routing", model=dataclasses.replace(smoke.model, attention="routing")
)
