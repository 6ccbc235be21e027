"""Apply a row-wise function in slices so long sequences fit in memory (FastFold/AlphaFold "subbatching").

`chunked(fn, chunk_size)(*args)` equals `fn(*args)` when `fn` treats the leading axis of its batched
arguments independently, but materialises temporaries for only `chunk_size` rows at a time (`lax.map`
over slices). The leading axis is padded to a multiple of `chunk_size` and the padding sliced off, so any
length works.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp


def chunked(fn: Callable, chunk_size: int | None, batch_axes: Sequence[int | None] | None = None,
            out_axis: int = 0) -> Callable:
    """Wrap `fn` so it runs in slices of `chunk_size` along the batch axis of each argument.

    batch_axes: per positional argument, the axis that is sliced, or None for arguments passed whole
      (default: axis 0 of every argument). The sliced axes must all have the same length.
    out_axis: the axis of every output that the slices are concatenated along.
    A `chunk_size` of None, 0 or "auto" (not yet resolved by the prediction runner), or not smaller than
    the batch, calls `fn` directly.
    """

    def wrapped(*args):
        axes = list(batch_axes) if batch_axes is not None else [0] * len(args)
        if len(axes) != len(args):
            raise ValueError(f"chunked: {len(args)} arguments but {len(axes)} batch axes")
        sizes = {a.shape[ax] for a, ax in zip(args, axes) if ax is not None}
        if len(sizes) != 1:
            raise ValueError(f"chunked: batched arguments disagree on the batch size: {sorted(sizes)}")
        (size,) = sizes
        if not isinstance(chunk_size, int) or chunk_size <= 0 or chunk_size >= size:
            return fn(*args)
        num_chunks = -(-size // chunk_size)
        padded = num_chunks * chunk_size

        def split(a, ax):
            a = jnp.moveaxis(a, ax, 0)
            a = jnp.pad(a, [(0, padded - size)] + [(0, 0)] * (a.ndim - 1))
            return a.reshape((num_chunks, chunk_size) + a.shape[1:])

        sliced = [split(a, ax) if ax is not None else None for a, ax in zip(args, axes)]

        def one_chunk(chunk_args):
            full = [jnp.moveaxis(c, 0, ax) if ax is not None else a for c, a, ax in zip(chunk_args, args, axes)]
            return fn(*full)

        out = jax.lax.map(one_chunk, sliced)

        def merge(o):
            o = o.reshape((padded,) + o.shape[2:])[:size]
            return jnp.moveaxis(o, 0, out_axis) if out_axis else o

        # lax.map stacks each output on a new leading axis; a chunk's batch axis must be out_axis.
        if out_axis:
            out = jax.tree_util.tree_map(lambda o: jnp.moveaxis(o, out_axis + 1, 1), out)
        return jax.tree_util.tree_map(merge, out)

    return wrapped


def pair_rows_chunk(chunk_size, num_res: int) -> int:
    """A chunk of `chunk_size` pair rows for ops that see the pair flattened to `[N_res * N_res, ...]`
    (the template point-wise attention): `chunk_size * N_res` flat rows, or 0 (unchunked)."""
    return chunk_size * num_res if isinstance(chunk_size, int) and chunk_size > 0 else 0
