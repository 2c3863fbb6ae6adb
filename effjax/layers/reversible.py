"""Reversible residual layers (RevNet, Gomez et al. 2017; used in the Reformer, Kitaev et al. 2020).

A block maps ``(x1, x2)`` to ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``, and its
inputs can be rebuilt from its outputs: ``x2 = y2 - G(y1)``, ``x1 = y1 - F(x2)``.
:class:`ReversibleStack` runs ``L`` such blocks under a ``jax.custom_vjp`` whose
backward pass walks the stack in reverse, rebuilding each block's inputs from its
outputs, so training memory holds one block's activations instead of ``L``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Params = Any
Rngs = Mapping[str, jax.Array]
# (params, x, rngs) -> F(x) or G(x): one residual branch as a pure function.
BranchFn = Callable[[Params, jax.Array, Rngs], jax.Array]


def _layer_rngs(rngs: Rngs, layer: jax.Array, branch: int) -> dict[str, jax.Array]:
    """The keys of one branch of one layer, folded from the stack's keys, so the backward pass
    can replay exactly the randomness (dropout masks, LSH rotations) of the forward pass."""
    return {
        name: jax.random.fold_in(jax.random.fold_in(key, layer), branch)
        for name, key in rngs.items()
    }


def _block(f: BranchFn, g: BranchFn, params, layer, x1, x2, rngs):
    y1 = x1 + f(params["f"], x2, _layer_rngs(rngs, layer, 0))
    y2 = x2 + g(params["g"], y1, _layer_rngs(rngs, layer, 1))
    return y1, y2


def _stack_forward(f: BranchFn, g: BranchFn, params, x1, x2, rngs):
    """All blocks in order with lax.scan over the stacked params; autodiff stores each block."""
    num_layers = jax.tree.leaves(params)[0].shape[0]

    def step(carry, layer_params_and_index):
        layer_params, layer = layer_params_and_index
        return _block(f, g, layer_params, layer, *carry, rngs), None

    (y1, y2), _ = jax.lax.scan(step, (x1, x2), (params, jnp.arange(num_layers)))
    return y1, y2


def _reversible_forward(f: BranchFn, g: BranchFn) -> Callable:
    """``(params, x1, x2, rngs) -> (y1, y2)`` whose gradient rebuilds activations backwards."""

    @jax.custom_vjp
    def run(params, x1, x2, rngs):
        return _stack_forward(f, g, params, x1, x2, rngs)

    def run_fwd(params, x1, x2, rngs):
        y1, y2 = _stack_forward(f, g, params, x1, x2, rngs)
        return (y1, y2), (params, y1, y2, rngs)

    def run_bwd(residuals, cotangents):
        params, y1, y2, rngs = residuals
        num_layers = jax.tree.leaves(params)[0].shape[0]

        def step(carry, layer_params_and_index):
            y1, y2, dy1, dy2 = carry
            layer_params, layer = layer_params_and_index
            g_out, g_vjp = jax.vjp(
                lambda p, h: g(p, h, _layer_rngs(rngs, layer, 1)), layer_params["g"], y1
            )
            x2 = y2 - g_out
            dg_params, dy1_via_g = g_vjp(dy2)
            dx1 = dy1 + dy1_via_g
            f_out, f_vjp = jax.vjp(
                lambda p, h: f(p, h, _layer_rngs(rngs, layer, 0)), layer_params["f"], x2
            )
            x1 = y1 - f_out
            df_params, dx2_via_f = f_vjp(dx1)
            dx2 = dy2 + dx2_via_f
            return (x1, x2, dx1, dx2), {"f": df_params, "g": dg_params}

        (_, _, dx1, dx2), dparams = jax.lax.scan(
            step,
            (y1, y2, *cotangents),
            (params, jnp.arange(num_layers)),
            reverse=True,
        )
        return dparams, dx1, dx2, jax.tree.map(lambda _: None, rngs)

    run.defvjp(run_fwd, run_bwd)
    return run


class ReversibleStack(nn.Module):
    r"""``num_layers`` reversible residual blocks: ``y1 = x1 + F(x2)``, ``y2 = x2 + G(y1)``.

    ``f()`` and ``g()`` build fresh (unbound) linen modules called as
    ``module(x [B, T, D], deterministic=...) -> [B, T, D]``; each layer gets its own
    parameters, stacked along a leading layer axis in the ``"layers"`` param
    (``{"f": ..., "g": ...}``). Only the ``"params"`` collection is supported
    inside the blocks.

    With ``reversible=True`` (the Reformer's choice) the gradient is a custom VJP
    that rebuilds each block's inputs from its outputs on the way back, so
    training memory does not grow with ``num_layers`` (Gomez et al. 2017,
    Kitaev et al. 2020 Sec. 4). ``reversible=False`` gives the ordinary residual
    stack (autodiff stores every block) with identical parameters and outputs.

    Randomness: when not deterministic, one key per collection in
    ``rng_collections`` that the caller provides is drawn with ``make_rng`` and
    folded with the layer index and branch, so the backward pass replays the
    same dropout masks and LSH rotations.

    Attributes:
      f: factory of the F branch (e.g. attention), ``() -> nn.Module``.
      g: factory of the G branch (e.g. feed-forward).
      num_layers: L >= 1.
      reversible: rebuild activations in the backward pass (default True).
      rng_collections: PRNG streams handed to the branches.

    Example:
      >>> import jax, jax.numpy as jnp, flax.linen as nn
      >>> class Branch(nn.Module):
      ...     @nn.compact
      ...     def __call__(self, x, deterministic=True):
      ...         return nn.Dense(x.shape[-1])(jnp.tanh(x))
      >>> stack = ReversibleStack(f=Branch, g=Branch, num_layers=4)
      >>> x = jnp.ones((2, 8, 16))
      >>> variables = stack.init(jax.random.key(0), x, x)
      >>> y1, y2 = stack.apply(variables, x, x)
      >>> y1.shape
      (2, 8, 16)
    """

    f: Callable[[], nn.Module]
    g: Callable[[], nn.Module]
    num_layers: int
    reversible: bool = True
    rng_collections: Sequence[str] = ("dropout", "attention")

    @nn.compact
    def __call__(
        self, x1: jax.Array, x2: jax.Array, *, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """``(x1, x2)`` -> ``(y1, y2)``, all ``[B, T, D]``."""
        if self.num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {self.num_layers}")
        if x1.shape != x2.shape:
            raise ValueError(f"x1 and x2 must have the same shape, got {x1.shape} and {x2.shape}")
        f_module, g_module = self.f(), self.g()

        def branch(module: nn.Module) -> BranchFn:
            def apply(params, x, rngs):
                return module.apply({"params": params}, x, deterministic=deterministic, rngs=rngs)

            return apply

        def init_layers(rng):
            def init_layer(layer):
                f_rng, g_rng = jax.random.split(jax.random.fold_in(rng, layer))
                return {
                    "f": f_module.init(f_rng, x2, deterministic=True)["params"],
                    "g": g_module.init(g_rng, x1, deterministic=True)["params"],
                }

            return jax.vmap(init_layer)(jnp.arange(self.num_layers))

        params = self.param("layers", init_layers)
        rngs = {}
        if not deterministic:
            rngs = {
                name: self.make_rng(name) for name in self.rng_collections if self.has_rng(name)
            }
        run = _reversible_forward if self.reversible else _ordinary_forward
        return run(branch(f_module), branch(g_module))(params, x1, x2, rngs)


def _ordinary_forward(f: BranchFn, g: BranchFn) -> Callable:
    """The same stack differentiated by plain autodiff (the baseline for reversibility)."""
    return lambda params, x1, x2, rngs: _stack_forward(f, g, params, x1, x2, rngs)
