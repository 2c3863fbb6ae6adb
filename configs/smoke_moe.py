"""The smoke model (a one-layer ListOps encoder) with a Switch mixture-of-experts
feed-forward (Fedus et al. 2021): 4 experts, top-1 routing, capacity factor 1.25, the
load-balancing and router z-losses added to the loss and logged (``train/moe/*``,
``tokens_dropped`` among them). The experts are split over the mesh axis ``"expert"``
as far as the host's devices allow (4 experts on 4 of 8 devices, data parallel over the
other 2; one device holds them all).

effjax train configs/smoke_moe.py --workdir /tmp/effjax-smoke-moe
"""

import dataclasses
import math

import jax

from effjax.configs.smoke import config as smoke

EXPERTS = 4

config = dataclasses.replace(
    smoke,
    name="smoke_moe",
    model=smoke.model.replace(num_experts=EXPERTS),
    run=dataclasses.replace(smoke.run, mesh_expert=math.gcd(EXPERTS, jax.device_count())),
)
