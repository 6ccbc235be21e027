"""Outer product mean: the MSA's communication into the pair representation (Suppl. Alg. 10).

act `[N_seq, N_res, c_m]`, mask `[N_seq, N_res]` -> pair update `[N_res, N_res, c_z]`:
  out[i, j] = (sum_s left[s, i] (x) right[s, j]) . W + b, divided by (1e-3 + number of sequences where
  both i and j are unmasked). The bias is added before the division, as in AlphaFold.
The `[rows, N_res, c, c]` outer products are built a slice of rows i at a time: `global_config.chunk_size` rows,
and never more than `outer_product_rows` allows (see there), chunk size or not.
Under DAP the MSA arrives split along residues; the right projection is all-gathered and the output is
the pair's row slice. `full_mask` (the whole `[N_seq, N_res]` mask, replicated) gives the normaliser.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfold.model.chunking import chunked
from jaxfold.model.primitives import LayerNorm, Linear, apply_linear, layer_norm
from jaxfold.parallel.dap import NO_DAP, Dap

# Bytes of outer products in flight. They are float32-sized per row (N_res * c * c * 4 B: 4 MiB at N=1,024,
# 40 MiB at N=10,240) and XLA holds two of them (the product and the copy laid out for the output
# projection: seen in the compiled program's temporaries, and as the 37 GiB allocation that ran an H100 out of
# memory at N=5,248 with 1,024-row slices). AlphaFold itself always runs this op in slices of 128 rows.
OUTER_PRODUCT_BYTES_IN_FLIGHT = 2**30


def outer_product_rows(num_rows: int, num_res: int, num_channel: int, chunk_size) -> int:
    """Rows i per slice of the outer product mean: `chunk_size` (0/None/"auto": all), lowered so that two
    float32 `[rows, num_res, c, c]` outer products fit in OUTER_PRODUCT_BYTES_IN_FLIGHT. 0 = all rows at once."""
    rows = chunk_size if isinstance(chunk_size, int) and 0 < chunk_size < num_rows else num_rows
    rows = min(rows, max(1, OUTER_PRODUCT_BYTES_IN_FLIGHT // (2 * num_res * num_channel**2 * 4)))
    return 0 if rows >= num_rows else rows


class OuterProductMean(nn.Module):
    config: object
    global_config: object
    num_output_channel: int
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, act, mask, full_mask=None, right=None):
        """`right` `[N_res, c, N_seq]`: the whole right projection, sequences last, when the caller computed
        it (`right_projection`, in-place inference); `act`/`mask` are then a slice of residues (pair rows i)."""
        gc = self.global_config
        c = self.config.num_outer_channel
        mask = mask[..., None].astype(act.dtype)
        act = LayerNorm(gc.kernels, name="layer_norm_input")(act)
        left = mask * Linear(c, initializer="linear", name="left_projection")(act)
        if right is None:
            right = self.dap.gather(mask * Linear(c, initializer="linear", name="right_projection")(act), axis=1)
            right = jnp.moveaxis(right, 0, -1)
        init = nn.initializers.zeros if gc.zero_init else nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        output_w = self.param("output_w", init, (c, c, self.num_output_channel)).astype(act.dtype)
        output_b = self.param("output_b", nn.initializers.zeros, (self.num_output_channel,)).astype(act.dtype)

        def rows(left_rows):
            # left_rows [N_seq, n_i, c]: contract over sequences first, then the two channel axes.
            outer = jnp.einsum("sic,jes->ijce", left_rows, right)
            return jnp.einsum("ijce,cef->ijf", outer, output_w) + output_b

        rows_per_slice = outer_product_rows(left.shape[1], right.shape[0], c, gc.chunk_size)
        out = chunked(rows, rows_per_slice, batch_axes=(1,), out_axis=0)(left)
        right_mask = mask if full_mask is None else full_mask[..., None].astype(act.dtype)
        norm = jnp.einsum("sic,sjc->ijc", mask, right_mask)
        return out / (1e-3 + norm)


def right_projection(params: dict, act: jax.Array, mask: jax.Array, kernels: str, chunk_size: int = 0) -> jax.Array:
    """The masked right projection of `OuterProductMean` from its parameters, `[N_res, c, N_seq]`: the operand
    every slice of pair rows needs whole, computed once before the in-place loop.

    Sequences last, the layout of the contraction over sequences (a `[N_seq, N_res, c]` operand is laid out
    again by XLA), and `chunk_size` sequences at a time, so neither a LayerNorm-ed copy of the MSA
    `[N_seq, N_res, c_m]` nor the projection in another layout exists whole (at 1,200 residues and 5,120
    extra rows in float32, 1.5 and 0.7 GiB)."""
    scale, offset = params["layer_norm_input"]["scale"], params["layer_norm_input"]["offset"]
    weights = params["right_projection"]

    def rows(act_rows, mask_rows):
        normed = layer_norm(act_rows, scale, offset, kernels=kernels)
        right = mask_rows[..., None].astype(act.dtype) * apply_linear(normed, weights["weights"], weights["bias"])
        return jnp.moveaxis(right, 0, -1)  # [N_res, c, rows]

    return chunked(rows, chunk_size, out_axis=2)(act, mask)
