"""Test-wide JAX set-up: 8 simulated CPU devices, strict rank promotion."""

import os

# Must happen before jax initialises its backends.
# Tests compile many small programs and run each once: XLA's CPU backend optimisation
# passes cost more than they save there (about 3x the CPU time of the suite).
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def rng() -> jax.Array:
    return jax.random.key(0)
