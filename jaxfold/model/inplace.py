"""Residual updates written into the activation slice by slice (FastFold's in-place inference).

`act = act + module(act)` holds two full-size arrays (and the module's full-size temporaries); for the pair
`[N, N, c_z]` at N = 10,000 in bf16 each is 25.6 GB. `add_in_place` computes the update for `chunk_size`
slices of `act` along one axis at a time and adds each into `act` with `dynamic_update_slice` inside a loop
whose carry is `act`, which XLA updates in its own buffer: one full-size array plus one slice of temporaries.

It is exact when the update of a slice depends only on that slice of `act` (read before it is written) and
on values computed before the loop (`shared`: a projected attention bias, a whole triangle-product operand).
That holds for every Evoformer update: row-wise ones (MSA row attention, starting-node triangle attention,
outgoing triangle multiplication, transitions) on row slices, column-wise ones on column slices.

Modules are applied inside the loop as pure functions of their bound variables (`pure`), because a Flax
module cannot be called inside a plain `lax` loop. Inference only (no dropout, no DAP, parameters exist).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
from jax import lax

from jaxfold.model.chunking import chunked, keep_done, over_slices


def pure(module: nn.Module, **fixed) -> Callable:
    """A bound submodule as a pure function `f(*args, **kwargs) = module(*args, **fixed, **kwargs)` of its
    current variables, callable inside `lax` loops. The module must already have its parameters (apply)."""
    variables = module.variables
    unbound = module.clone(parent=None)
    return lambda *args, **kwargs: unbound.apply(variables, *args, **fixed, **kwargs)


def add_in_place(
    block_update: Callable, act: jax.Array, axis: int, chunk_size: int, sliced: Sequence[tuple[jax.Array, int]] = ()
) -> jax.Array:
    """`act + update` with `update[s] = block_update(act[s], *(a[s] for a in sliced))` for slices `s` of
    `chunk_size` along `axis`, written into `act` one slice at a time.

    sliced: `(array, axis)` pairs sliced alongside (e.g. the mask, or the MSA for the outer product mean).
    `block_update` must not close over `act` itself (that would keep a second copy alive). A
    `chunk_size` <= 0 or >= the length computes the whole update at once, as `act + update`.
    """
    size = act.shape[axis]
    if chunk_size <= 0 or chunk_size >= size:
        return act + block_update(act, *(a for a, _ in sliced)).astype(act.dtype)

    def one(act, start, done):
        block = lax.dynamic_slice_in_dim(act, start, chunk_size, axis)
        args = [lax.dynamic_slice_in_dim(a, start, chunk_size, ax) for a, ax in sliced]
        update = block_update(block, *args).astype(act.dtype)
        # An overlapping last slice adds nothing to the elements already updated (`done`).
        return lax.dynamic_update_slice_in_dim(act, keep_done(block, block + update, done, axis), start, axis)

    return over_slices(one, act, size, chunk_size)


def map_rows(fn: Callable, x: jax.Array, chunk_size: int, axis: int = 0) -> jax.Array:
    """`fn(x)` for a row-wise `fn`, computed `chunk_size` slices of `x` along `axis` at a time (the outputs
    concatenated along the same axis): e.g. a projected bias from the pair without a full LayerNorm copy."""
    size = x.shape[axis]
    if chunk_size <= 0 or chunk_size >= size:
        return fn(x)
    return chunked(fn, chunk_size, batch_axes=(axis,), out_axis=axis)(x)


def copies_in_compiled(hlo_text: str, array_type: str) -> list[str]:
    """The operands of the copies of an `array_type` array (HLO spelling, e.g. "bf16[256,256,128]") in a
    compiled program's text (`compiled.as_text()`), except copies materialising a broadcast (a zero-filled
    output buffer). For the pair, each is an old pair kept beside the written one: what `add_in_place` exists
    to avoid (checked by tests/test_in_place_buffers.py on the CPU and by bench/kernels.py on a GPU)."""
    copies = re.findall(rf"{re.escape(array_type)}\{{[\d,]*\}} copy\((%[\w.\-]+)\)", hlo_text)
    return [c for c in copies if "broadcast" not in c]
