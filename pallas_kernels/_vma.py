"""Pallas calls inside `jax.shard_map(check_vma=True)`: giving the kernels' outputs a varying-axes type.

Under `shard_map` every value carries the set of manual mesh axes it varies over (its "vma": a DAP slice
varies over `dap`, a replicated parameter over nothing). Ordinary primitives infer their output's set from
their inputs, but a `pallas_call` cannot: its outputs are declared by `out_shape`, and a plain
`jax.ShapeDtypeStruct` declares no set, which JAX rejects under `check_vma` ("`manual_axis_type` on
`jax.ShapeDtypeStruct` must not be `None`"). JAX's own remedy, named in that error, is to declare the set on
the `ShapeDtypeStruct`; switching `check_vma` off would also drop the checks that guard the DAP collectives.

Two helpers, used by every kernel:

* `match_vma(*trees)`: casts every array to vary over the union of the axes any of them varies over (a
  no-op at run time). Kernels call it at their public entry point, *before* their `custom_vjp`: a kernel's
  output depends on all of its inputs, so it varies wherever any input does, and the custom backward must
  return each cotangent with its primal's type. Casting outside the `custom_vjp` gives both: inside, every
  primal has the same type, and the cast's transpose (a `psum` over the axes a replicated input was cast
  along, e.g. a LayerNorm scale under DAP) sums the per-device parameter gradients, as XLA's autodiff does
  for the unfused ops.
* `pallas_call(kernel, *, out_shape, **kwargs)`: `pl.pallas_call` whose `out_shape` leaves are declared
  with the varying axes of the call's inputs.

Outside `shard_map` (and with `check_vma=False`) every set is empty and both are the identity.

Version notes: jax 0.10.2 exposes the set as `jax.typeof(x).manual_axis_type.varying` (`.mat` for short)
and takes `jax.ShapeDtypeStruct(..., manual_axis_type=...)`; earlier releases (<= 0.9) spelled it
`jax.typeof(x).vma` and `ShapeDtypeStruct(..., vma=...)`. The spelling is detected from the installed jax,
not assumed (0.11.2, on the GPU machine, was not run here). The cast is `jax.lax.pcast(x, axes,
to="varying")`, or `jax.lax.pvary` where `pcast` is absent. Public APIs only: `jax.typeof`,
`jax.ShapeDtypeStruct`, `jax.lax.pcast`, `jax.shard_map(check_vma=, axis_names=)`,
`jax.sharding.get_abstract_mesh`.
"""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.sharding import PartitionSpec as P

_SDS_PARAMS = inspect.signature(jax.ShapeDtypeStruct).parameters
# The keyword under which this jax's ShapeDtypeStruct takes the varying axes (None: it has no such types).
_SDS_KEYWORD = next((k for k in ("manual_axis_type", "vma") if k in _SDS_PARAMS), None)


def _axis_type(x):
    """The varying-axes type object of `x` as this jax spells it (ManualAxisType or frozenset), or None."""
    aval = jax.typeof(x)
    for name in ("manual_axis_type", "mat", "vma"):
        value = getattr(aval, name, None)
        if value is not None:
            return value
    return None


def varying_axes(x) -> frozenset:
    """The manual mesh axes `x` varies over (empty outside `shard_map`)."""
    value = _axis_type(x)
    if value is None:
        return frozenset()
    return frozenset(getattr(value, "varying", value))


def _cast_to_varying(x, axes: tuple):
    if hasattr(jax.lax, "pcast"):
        return jax.lax.pcast(x, axes, to="varying")
    return jax.lax.pvary(x, axes)


def match_vma(*trees):
    """`trees` with every array leaf cast to vary over the union of the axes any leaf varies over.

    Returns the trees as a tuple (one tree: that tree). `None` leaves (absent optional inputs) stay None.
    """
    leaves = [x for x in jax.tree_util.tree_leaves(trees) if x is not None]
    axes = frozenset().union(*(varying_axes(x) for x in leaves))
    if axes:

        def cast(x):
            missing = tuple(sorted(axes - varying_axes(x)))
            return _cast_to_varying(x, missing) if missing else x

        trees = jax.tree_util.tree_map(cast, trees)
    return trees[0] if len(trees) == 1 else trees


def _inside_shard_map() -> bool:
    """Whether this is traced inside `shard_map` (the abstract mesh has manual axes)."""
    return bool(getattr(jax.sharding.get_abstract_mesh(), "manual_axes", ()))


def _typed(struct, like):
    """`struct` (a ShapeDtypeStruct) declared with the varying-axes type of the array `like`. Outside
    `shard_map` it stays as given: the single-device path builds its kernels exactly as before."""
    if _SDS_KEYWORD is None or like is None or not isinstance(struct, jax.ShapeDtypeStruct):
        return struct
    if not _inside_shard_map():
        return struct
    if _SDS_KEYWORD == "vma":  # jax 0.6-0.9: a set of axis names
        return jax.ShapeDtypeStruct(struct.shape, struct.dtype, vma=varying_axes(like))
    axis_type = _axis_type(like)  # jax 0.10+: the operand's own ManualAxisType object
    if axis_type is None or isinstance(axis_type, (set, frozenset)):
        return struct
    return jax.ShapeDtypeStruct(struct.shape, struct.dtype, manual_axis_type=axis_type)


def _untyped(x):
    """`x`'s values as a fresh array. Traced where `check_vma` is off, an op's result carries no varying axes
    (a plain pass-through would keep its input's type)."""
    return x + jnp.zeros((), x.dtype)


def _interpret_outside_check(call, args, axes: frozenset):
    """Run `call(*args)` (an interpret-mode pallas_call) where JAX does not check varying axes, and give its
    outputs back the type `axes`.

    Pallas' interpreter (`interpret=True`, the CPU path) evaluates the kernel's body op by op while the
    program is lowered, on the operands' types, and under `check_vma` it rejects the first op that mixes a
    sharded operand with a constant of the kernel (jax 0.10: "Primitive pad requires varying manual axes to
    match"); the compiled (Triton) lowering does not evaluate the body and needs none of this. So, on the
    CPU only: a nested `shard_map` over no new axes with `check_vma=False` (lowered inline, no collective)
    holds the call, its operands re-made there without a varying type so that the interpreter's loop types
    agree, and its outputs, which come back typed as replicated, are cast to vary over `axes` (the type the
    compiled path declares). The kernels call pallas_call only inside their `custom_vjp` rules, so autodiff
    never transposes this region.
    """
    inner = jax.shard_map(
        lambda *a: call(*jax.tree_util.tree_map(_untyped, a)),
        mesh=jax.sharding.get_abstract_mesh(),
        in_specs=P(),
        out_specs=P(),
        axis_names=frozenset(),
        check_vma=False,
    )
    cast = tuple(sorted(axes))
    return jax.tree_util.tree_map(lambda x: _cast_to_varying(x, cast), inner(*args))


def pallas_call(kernel, *, out_shape, **kwargs):
    """`pl.pallas_call(kernel, out_shape=..., **kwargs)` whose outputs vary over the axes its inputs vary
    over, so that it type-checks inside `shard_map(check_vma=True)`. The inputs are first cast to one
    common type (`match_vma`); the outputs take it."""

    def call(*args):
        args = match_vma(args)
        like = next((x for x in jax.tree_util.tree_leaves(args) if x is not None), None)
        axes = varying_axes(like) if like is not None else frozenset()
        if axes and kwargs.get("interpret"):
            return _interpret_outside_check(pl.pallas_call(kernel, out_shape=out_shape, **kwargs), args, axes)
        shapes = jax.tree_util.tree_map(lambda s: _typed(s, like), out_shape)
        return pl.pallas_call(kernel, out_shape=shapes, **kwargs)(*args)

    return call
