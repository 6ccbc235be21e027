"""Triangle self-attention around the starting or ending node (Jumper et al. 2021, Suppl. Algs. 13, 14).

pair_act `[N_res, N_res, c_z]`, pair_mask `[N_res, N_res]` -> residual update `[N_res, N_res, c_z]`.
`orientation` 'per_row' attends along rows (starting node); 'per_column' transposes first (ending node).
Under DAP the pair arrives split along the attention's batch axis (rows for the starting node, columns for
the ending node); the projected bias `[H, N_res, N_res]` is all-gathered.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxfold.model.attention import attention_for, mask_to_bias, pair_bias
from jaxfold.model.primitives import LayerNorm
from jaxfold.parallel.dap import NO_DAP, Dap


class TriangleAttention(nn.Module):
    config: object
    global_config: object
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, pair_act, pair_mask, nonbatched_bias=None):
        """`nonbatched_bias` `[H, N_res, N_res]` (in the attention's orientation): the projected bias when
        the caller computed it from the whole pair (in-place inference works on slices of rows/columns)."""
        per_column = self.config.orientation == "per_column"
        # The LayerNorm (per position) before the transpose: a Pallas LayerNorm fixes its operand's layout, and
        # on the transposed view that layout is column-major, which XLA's GPU compiler propagated into a slice
        # loop's carry, transposing the whole pair before and after the loop (a second pair in memory).
        pair_act = LayerNorm(self.global_config.kernels, name="query_norm")(pair_act)
        if per_column:
            pair_act = jnp.swapaxes(pair_act, -2, -3)
            pair_mask = jnp.swapaxes(pair_mask, -1, -2)
        bias = mask_to_bias(pair_mask)[:, None, None, :].astype(jnp.float32)
        if nonbatched_bias is None:
            nonbatched_bias = pair_bias(self, pair_act, self.config.num_head, self.global_config.kernels)
            nonbatched_bias = self.dap.gather(nonbatched_bias, axis=1)
        attn = attention_for(self.config, self.global_config, pair_act.shape[-1])
        out = attn(pair_act, pair_act, bias, nonbatched_bias)
        return jnp.swapaxes(out, -2, -3) if per_column else out
