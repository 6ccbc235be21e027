"""Outer product mean: the MSA's communication into the pair representation (Suppl. Alg. 10).

act `[N_seq, N_res, c_m]`, mask `[N_seq, N_res]` -> pair update `[N_res, N_res, c_z]`:
  out[i, j] = (sum_s left[s, i] (x) right[s, j]) . W + b, divided by (1e-3 + number of sequences where
  both i and j are unmasked). The bias is added before the division, as in AlphaFold.
With `global_config.chunk_size` the `[chunk, N_res, c, c]` outer products are built a slice of rows i at a time.
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


class OuterProductMean(nn.Module):
    config: object
    global_config: object
    num_output_channel: int
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, act, mask, full_mask=None, right=None):
        """`right` `[N_seq, N_res, c]`: the whole right projection when the caller computed it
        (`right_projection`, in-place inference); `act`/`mask` are then a slice of residues (pair rows i)."""
        gc = self.global_config
        c = self.config.num_outer_channel
        mask = mask[..., None].astype(act.dtype)
        act = LayerNorm(gc.kernels, name="layer_norm_input")(act)
        left = mask * Linear(c, initializer="linear", name="left_projection")(act)
        if right is None:
            right = self.dap.gather(mask * Linear(c, initializer="linear", name="right_projection")(act), axis=1)
        init = nn.initializers.zeros if gc.zero_init else nn.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
        output_w = self.param("output_w", init, (c, c, self.num_output_channel)).astype(act.dtype)
        output_b = self.param("output_b", nn.initializers.zeros, (self.num_output_channel,)).astype(act.dtype)

        def rows(left_rows):
            # left_rows [N_seq, n_i, c]: contract over sequences first, then the two channel axes.
            outer = jnp.einsum("sic,sje->ijce", left_rows, right)
            return jnp.einsum("ijce,cef->ijf", outer, output_w) + output_b

        out = chunked(rows, gc.chunk_size, batch_axes=(1,), out_axis=0)(left)
        right_mask = mask if full_mask is None else full_mask[..., None].astype(act.dtype)
        norm = jnp.einsum("sic,sjc->ijc", mask, right_mask)
        return out / (1e-3 + norm)


def right_projection(params: dict, act: jax.Array, mask: jax.Array, kernels: str) -> jax.Array:
    """The masked right projection `[N_seq, N_res, c]` of `OuterProductMean` from its parameters (the
    operand every slice of pair rows needs whole, computed once before the in-place loop)."""
    normed = layer_norm(act, params["layer_norm_input"]["scale"], params["layer_norm_input"]["offset"], kernels=kernels)
    weights = params["right_projection"]
    return mask[..., None].astype(act.dtype) * apply_linear(normed, weights["weights"], weights["bias"])
