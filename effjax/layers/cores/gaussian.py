"""The core of hard-coded Gaussian attention (``attention="gaussian"``, You et al. 2020).

The attention weights are fixed Gaussians around each position, so the core has no
variables and ignores the queries and keys (``uses_query_key`` is False): the layer
builds only the value and output projections.
"""

from __future__ import annotations

from collections.abc import Sequence

from effjax.attention import benchspec, gaussian, registry
from effjax.layers.cores.base import AttentionCore


class GaussianCore(AttentionCore):
    """:func:`~effjax.attention.gaussian_attention` in a layer.

    Options: ``offsets`` (per-head centres; default the paper's previous/next token,
    previous/current when causal), ``widths`` (1.0), ``window_size`` (truncation,
    default ``ceil(max|mu| + 5 max sigma)``), ``scale`` (unused, accepted).
    """

    function = staticmethod(gaussian.gaussian_attention)

    offsets: float | Sequence[float] | None = None
    widths: float | Sequence[float] = 1.0
    window_size: int | None = None
    scale: float | None = None

    @property
    def uses_query_key(self) -> bool:
        return False

    def check(self):
        if self.window_size is not None and self.window_size < 0:
            raise ValueError(f"window_size must be >= 0, got {self.window_size!r}")

    def function_options(self):
        options = super().function_options()
        # Tuples, not lists: the options are static under jit and must be hashable.
        for name in ("offsets", "widths"):
            if isinstance(options.get(name), list):
                options[name] = tuple(options[name])
        return options


def _bench_flops(shape: benchspec.Shape, options) -> float:
    # A (2w + 1)-tap depthwise convolution of the values (and of the mask, negligible).
    taps = 2 * gaussian.gaussian_window((1.0,), (1.0,)) + 1
    return 2.0 * shape.batch * shape.heads * shape.seq_len * taps * shape.head_dim


BENCH = benchspec.BenchSpec(flops=_bench_flops, summary=benchspec.fixed(widths=1.0))

registry.attach("gaussian", core=GaussianCore, bench=BENCH)
