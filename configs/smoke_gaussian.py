"""The smoke model (a one-layer ListOps encoder) with gaussian attention, default options.

effjax train configs/smoke_gaussian.py --workdir /tmp/effjax-smoke-gaussian
"""

import dataclasses

from effjax.configs.smoke import config as smoke

config = dataclasses.replace(
    smoke, name="smoke_gaussian", model=dataclasses.replace(smoke.model, attention="gaussian")
)
