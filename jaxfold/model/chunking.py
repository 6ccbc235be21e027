"""Apply a row-wise function in slices so long sequences fit in memory (FastFold/AlphaFold "subbatching").

`chunked(fn, chunk_size)(*args)` equals `fn(*args)` when `fn` treats the leading axis of its batched
arguments independently, but materialises temporaries for only `chunk_size` rows at a time. The slices
are read with `dynamic_slice` and the results written into the output with `dynamic_update_slice` inside
one `fori_loop` (`over_slices`), so neither the inputs nor the output are ever padded, reshaped or
concatenated: for a pair-sized output that would be a second full-size array.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from jaxfold.parallel.dap import vary_like


def chunked(
    fn: Callable,
    chunk_size: int | str | None,
    batch_axes: Sequence[int | None] | None = None,
    out_axis: int = 0,
    after=None,
) -> Callable:
    """Wrap `fn` so it runs in slices of `chunk_size` along the batch axis of each argument.

    batch_axes: per positional argument, the axis that is sliced, or None for arguments passed whole
      (default: axis 0 of every argument). The sliced axes must all have the same length.
    out_axis: the axis of every output that the slices are written along.
    after: arrays the output buffer is made from instead of the arguments (`output_buffer`), so that it
      cannot exist before them. For arguments that are the program's inputs (features) XLA may otherwise
      make the buffer at the program's start: the MSA embeddings pass the pair before them.
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

        def call(start, length):
            return fn(
                *(a if ax is None else lax.dynamic_slice_in_dim(a, start, length, ax) for a, ax in zip(args, axes))
            )

        def write(out, start, done):
            # The rows of an overlapping last slice that are already written (`done`) are written again with
            # the same values (`fn` is row-wise): no select is needed.
            del done
            return jax.tree_util.tree_map(
                lambda buffer, piece: lax.dynamic_update_slice_in_dim(buffer, piece, start, out_axis),
                out,
                call(start, chunk_size),
            )

        shapes = jax.eval_shape(lambda: call(0, chunk_size))
        out = jax.tree_util.tree_map(
            lambda s: output_buffer(
                s.shape[:out_axis] + (size,) + s.shape[out_axis + 1 :], s.dtype, args if after is None else after
            ),
            shapes,
        )
        out = vary_like(out, *args)  # under shard_map the loop carry varies like what is written into it
        return over_slices(write, out, size, chunk_size)

    return wrapped


def output_buffer(shape: tuple[int, ...], dtype, after) -> jax.Array:
    """A buffer `shape` for a slice loop that writes every element of it, made from a value of `after` (any
    pytree of arrays: the loop's inputs) so that XLA creates it where the loop starts. Its initial contents
    are one element of that input, broadcast: they are never read.

    A `jnp.zeros` buffer is a broadcast of the constant 0. XLA merges equal broadcasts and gives each loop
    its own copy: the CPU compiler copies one zero array into every buffer; the GPU compiler (jax 0.11.2,
    H100) fuses the broadcast and its copies into one multi-output fusion, so the four triangle
    multiplications' whole operands of one pass (extra-MSA and Evoformer blocks, 25 GiB each at N = 10,240 in
    bf16) were made at once: 100 GiB. A zero computed from the input does not prevent this: the GPU compiler
    folded `(x != x) * 0` back to the constant, and XLA expands an `optimization_barrier` into scheduling
    edges before it simplifies, so a zero passed through one is folded too. An element of the input cannot
    be folded, so each buffer has its own operand and is made only once that input exists.
    """
    anchors = [
        a
        for a in jax.tree_util.tree_leaves(after)
        if hasattr(a, "dtype") and a.size > 0 and (jnp.issubdtype(a.dtype, jnp.number) or a.dtype == jnp.bool_)
    ]
    if not anchors:
        return jnp.zeros(shape, dtype)
    element = lax.stop_gradient(anchors[0][(0,) * anchors[0].ndim]).astype(dtype)
    return jnp.broadcast_to(element, shape)


def over_slices(step: Callable, carry, size: int, chunk_size: int):
    """`carry = step(carry, start, done)` for slices `[start, start + chunk_size)` covering `[0, size)`, in one
    `fori_loop` of `ceil(size / chunk_size)` iterations (`start` traced, the length always `chunk_size`).

    When `chunk_size` does not divide `size`, the last slice is moved back to end at `size`: its first `done`
    elements (traced) were written by the slice before it, and the step must leave them as they are
    (`keep_done`); `done` is the Python int 0 when `chunk_size` divides `size`, and for every other slice.

    The one slice loop of every chunked writer (`chunked`, `inplace.add_in_place`, `embedders.fill_rows`):
    a buffer carried through it is updated by XLA in its own memory. There is no remainder step outside the
    loop: a step at static offsets let XLA's GPU compiler fold `slice(update(pair))` into the update, read
    the old pair after it was written and so copy it (a second pair), and lay out column slices by transposing
    the whole pair twice (fp32, N = 8,000, chunk 128, H100: 30.5 + 15.3 GiB of the 65.4 GiB of temporaries).
    """
    if not 0 < chunk_size <= size:
        raise ValueError(
            f"over_slices: chunk size {chunk_size} must be in [1, {size}] (callers run a longer one whole)"
        )
    num_slices = -(-size // chunk_size)
    if size % chunk_size == 0:
        return lax.fori_loop(0, num_slices, lambda i, c: step(c, i * chunk_size, 0), carry)

    def one(i, c):
        start = jnp.minimum(i * chunk_size, size - chunk_size)
        return step(c, start, i * chunk_size - start)

    return lax.fori_loop(0, num_slices, one, carry)


def keep_done(old: jax.Array, new: jax.Array, done, axis: int) -> jax.Array:
    """`new` with its first `done` elements along `axis` taken from `old` (`over_slices`' overlapping last
    slice): a select, so whatever `new` holds there (even NaN) does not reach the result."""
    if isinstance(done, int) and done == 0:
        return new
    index = lax.broadcasted_iota(jnp.int32, new.shape, axis)
    return jnp.where(index < done, old, new)


def pair_rows_chunk(chunk_size, num_res: int) -> int:
    """A chunk of `chunk_size` pair rows for ops that see the pair flattened to `[N_res * N_res, ...]`
    (the template point-wise attention): `chunk_size * N_res` flat rows, or 0 (unchunked)."""
    return chunk_size * num_res if isinstance(chunk_size, int) and chunk_size > 0 else 0
