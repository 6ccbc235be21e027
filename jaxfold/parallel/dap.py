"""Dynamic axial parallelism (DAP) helpers: one protein's MSA and pair split over the `dap` mesh axis.

Inside `jax.shard_map` over a mesh with a `dap` axis, each device holds a contiguous slice of one axis of
the MSA `[N_seq, N_res, c_m]` and pair `[N_res, N_res, c_z]` representations, and the Evoformer switches
the split axis with all-to-alls (FastFold, Cheng et al. 2022). `Dap()` (no axis) makes every helper the
identity, so the same module code runs sharded and unsharded.

Conventions: "rows" = axis 0, "columns" = axis 1. Sizes along a split axis must be multiples of `size`
(`pad_to_multiple` pads with zeros; masks mark the padding invalid).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Dap:
    """The DAP axis name and size; `Dap()` is the unsharded identity. Hashable (a Flax module attribute)."""

    axis_name: str | None = None
    size: int = 1

    @property
    def enabled(self) -> bool:
        return self.axis_name is not None and self.size > 1

    def index(self) -> jax.Array:
        return jax.lax.axis_index(self.axis_name) if self.enabled else jnp.asarray(0)

    def scatter(self, x: jax.Array, axis: int) -> jax.Array:
        """This device's slice of a replicated `x` along `axis` (no communication)."""
        if not self.enabled:
            return x
        chunk = x.shape[axis] // self.size
        return jax.lax.dynamic_slice_in_dim(x, self.index() * chunk, chunk, axis)

    def gather(self, x: jax.Array, axis: int) -> jax.Array:
        """Concatenate every device's slice along `axis` (all_gather; its transpose is a reduce-scatter)."""
        if not self.enabled:
            return x
        return jax.lax.all_gather(x, self.axis_name, axis=axis, tiled=True)

    def gather_replicated(self, x: jax.Array, axis: int) -> jax.Array:
        """Like `gather`, but typed replicated (invariant) across the axis: for a stack's final output,
        which leaves `shard_map` unsplit. Its transpose takes this device's slice of the cotangent."""
        if not self.enabled:
            return x
        try:
            return jax.lax.all_gather(x, self.axis_name, axis=axis, tiled=True, to="invarying")
        except TypeError:  # jax without `to=`: place the slice and sum (an all-reduce, also invariant)
            chunk = x.shape[axis]
            shape = list(x.shape)
            shape[axis] *= self.size
            full = jax.lax.dynamic_update_slice_in_dim(jnp.zeros(shape, x.dtype), x, self.index() * chunk, axis)
            return jax.lax.psum(full, self.axis_name)

    def row_to_col(self, x: jax.Array) -> jax.Array:
        """`[n_rows/d, n_cols, ...]` -> `[n_rows, n_cols/d, ...]` (all_to_all)."""
        if not self.enabled:
            return x
        return jax.lax.all_to_all(x, self.axis_name, split_axis=1, concat_axis=0, tiled=True)

    def col_to_row(self, x: jax.Array) -> jax.Array:
        """`[n_rows, n_cols/d, ...]` -> `[n_rows/d, n_cols, ...]` (all_to_all)."""
        if not self.enabled:
            return x
        return jax.lax.all_to_all(x, self.axis_name, split_axis=0, concat_axis=1, tiled=True)

    def padded_size(self, n: int) -> int:
        return -(-n // self.size) * self.size

    def pad_to_multiple(self, x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
        """Zero-pad `axes` of `x` up to multiples of the DAP size."""
        if not self.enabled:
            return x
        pads = [(0, 0)] * x.ndim
        for axis in axes:
            pads[axis] = (0, self.padded_size(x.shape[axis]) - x.shape[axis])
        return jnp.pad(x, pads)


NO_DAP = Dap()


def vary_like(tree, *refs):
    """Mark `tree`'s leaves as varying over every mesh axis any of `refs` varies over.

    Inside `shard_map` a loop carry must keep its type: a carry that starts invariant (zeros, constants,
    replicated values) but mixes with per-device data in the loop body (the batch split over `data`,
    per-example dropout keys, DAP slices) must be cast to varying before the loop. Outside `shard_map`,
    or on jax versions without varying-axis types, this is the identity.
    """
    typeof = getattr(jax, "typeof", None)
    if typeof is None or not hasattr(jax.lax, "pcast"):
        return tree

    def vma(x) -> set:
        aval = typeof(x)
        if hasattr(aval, "vma"):  # jax versions that expose the varying axes directly
            return set(aval.vma or ())
        return set(getattr(getattr(aval, "mat", None), "varying", ()) or ())

    axes = set()
    for ref in jax.tree_util.tree_leaves(refs):
        axes |= vma(ref)
    if not axes:
        return tree

    def cast(x):
        missing = tuple(sorted(axes - vma(x)))
        return jax.lax.pcast(x, missing, to="varying") if missing else x

    return jax.tree_util.tree_map(cast, tree)


def dropout_rng_refs(module, is_training: bool, global_config) -> tuple:
    """`(module.make_rng("dropout"),)` when `module` draws dropout masks (training and not
    `global_config.deterministic`), else `()`: the `vary_like` reference of a loop carry whose body
    mixes in per-example dropout keys (they vary over the `data` axis under `shard_map`)."""
    return (module.make_rng("dropout"),) if is_training and not global_config.deterministic else ()


def local_dropout_mask(
    dap: Dap,
    rng: jax.Array,
    keep_rate: float,
    local_shape: tuple[int, ...],
    split_axis: int | None,
    broadcast_dim: int | None,
) -> jax.Array:
    """Dropout keep-mask for a DAP-local tensor that equals the slice of the unsharded mask.

    Every device draws the mask for the *global* shape with the same key and keeps its own slice, so
    sharded training drops exactly what unsharded training would.
    """
    shape = list(local_shape)
    if broadcast_dim is not None:
        shape[broadcast_dim] = 1
    sliced = dap.enabled and split_axis is not None and split_axis != broadcast_dim
    if sliced:
        shape[split_axis] *= dap.size
    keep = jax.random.bernoulli(rng, keep_rate, shape)
    return dap.scatter(keep, split_axis) if sliced else keep
