"""One-hot distance binning used by the recycling and template embedders."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def dgram_between(
    positions_i: jax.Array, positions_j: jax.Array, num_bins: int, min_bin: float, max_bin: float
) -> jax.Array:
    """positions_i `[I, 3]`, positions_j `[J, 3]` -> one-hot distogram `[I, J, num_bins]` (see below)."""
    lower = jnp.square(jnp.linspace(min_bin, max_bin, num_bins))
    upper = jnp.concatenate([lower[1:], jnp.array([1e8], dtype=jnp.float32)], axis=-1)
    dist2 = jnp.sum(jnp.square(positions_i[..., :, None, :] - positions_j[..., None, :, :]), axis=-1, keepdims=True)
    return (dist2 > lower).astype(jnp.float32) * (dist2 < upper).astype(jnp.float32)


def dgram_from_positions(positions: jax.Array, num_bins: int, min_bin: float, max_bin: float) -> jax.Array:
    """positions `[N, 3]` -> one-hot distogram `[N, N, num_bins]`.

    Bins are compared in squared distance, `num_bins` lower edges evenly spaced from min_bin to max_bin,
    the last bin open-ended: AlphaFold's `dgram_from_positions` (below min_bin every bin is zero).
    """
    return dgram_between(positions, positions, num_bins, min_bin, max_bin)
