"""The smoke model (a one-layer ListOps encoder) with synthesizer attention, default options.

effjax train configs/smoke_synthesizer.py --workdir /tmp/effjax-smoke-synthesizer
"""

import dataclasses

from effjax.configs.smoke import config as smoke

config = dataclasses.replace(
    smoke, name="smoke_synthesizer", model=dataclasses.replace(smoke.model, attention="synthesizer")
)
