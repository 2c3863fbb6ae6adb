"""The documentation's variant table reads the committed results files; a change of their
layout must fail here, in the test suite, not only when `make docs` runs."""

import sys
from pathlib import Path

import effjax.attention as ea

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
import _tables


def test_variant_table_has_every_registered_variant_and_the_committed_numbers():
    lines = _tables.variants_table().splitlines()
    names = [line.split("|")[1].strip().strip("`") for line in lines[2:]]
    assert sorted(names) == sorted(ea.available())
    (local,) = [line for line in lines if line.startswith("| `local` ")]
    cells = [c.strip() for c in local.split("|")[1:-1]]
    header = [c.strip() for c in lines[0].split("|")[1:-1]]
    assert len(cells) == len(header)
    # The committed CPU run: local attention is faster than jax.nn at T=4096.
    assert float(cells[header.index("fwd speed-up at T=4096")].rstrip("x")) > 1.0
    assert any(h.startswith("ListOps") for h in header)
