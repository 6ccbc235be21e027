"""The three MSA attentions of the Evoformer (Jumper et al. 2021, Suppl. Algs. 7, 8, 19).

Each returns the residual update `[N_seq, N_res, c_m]` (before dropout and the residual add), as AlphaFold's
modules do. `config` is the sub-module's section of the model config; `global_config` the model's
`global_config`.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxfold.model.attention import GlobalAttention, attention_for, mask_to_bias, pair_bias
from jaxfold.model.primitives import LayerNorm
from jaxfold.parallel.dap import NO_DAP, Dap


class MSARowAttentionWithPairBias(nn.Module):
    """Row-wise gated self-attention on the MSA, biased by the pair representation.

    msa_act `[N_seq, N_res, c_m]`, msa_mask `[N_seq, N_res]`, pair_act `[N_res, N_res, c_z]`.
    Under DAP the MSA rows (sequences) and pair rows are local slices; the projected pair bias
    `[H, N_res, N_res]` is all-gathered (the only communication).
    """

    config: object
    global_config: object
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, msa_act, msa_mask, pair_act, nonbatched_bias=None):
        """`nonbatched_bias` `[H, N_res, N_res]`: the projected pair bias when the caller computed it
        (in-place inference, `pair_bias_in_chunks`); `pair_act` is then unused."""
        kernels = self.global_config.kernels
        bias = mask_to_bias(msa_mask)[:, None, None, :].astype(jnp.float32)
        msa_act = LayerNorm(kernels, name="query_norm")(msa_act)
        if nonbatched_bias is None:
            pair_act = LayerNorm(kernels, name="feat_2d_norm")(pair_act)
            nonbatched_bias = self.dap.gather(pair_bias(self, pair_act, self.config.num_head, kernels), axis=1)
        attn = attention_for(self.config, self.global_config, msa_act.shape[-1])
        return attn(msa_act, msa_act, bias, nonbatched_bias)


class MSAColumnAttention(nn.Module):
    """Column-wise attention on the MSA: every residue attends over sequences.

    msa_act `[N_seq, N_res, c_m]`, msa_mask `[N_seq, N_res]`. Gated multi-head attention in the main
    Evoformer; with `use_global` AlphaFold's global attention (one averaged query per head), used by the
    extra-MSA stack (Suppl. Alg. 19).
    """

    config: object
    global_config: object
    use_global: bool = False

    @nn.compact
    def __call__(self, msa_act, msa_mask):
        gc = self.global_config
        # Normalised before the transpose, as in `TriangleAttention` (why: there): on a GPU a slice loop over
        # columns of the extra MSA `[5,120, N, 64]` otherwise transposed all of it twice (fp32 N = 1,200: 1.5 GiB
        # at the pass's peak).
        msa_act = LayerNorm(gc.kernels, name="query_norm")(msa_act)
        msa_act = jnp.swapaxes(msa_act, -2, -3)
        msa_mask = jnp.swapaxes(msa_mask, -1, -2)
        if self.use_global:
            attn = GlobalAttention(
                num_head=self.config.num_head,
                output_dim=msa_act.shape[-1],
                gating=self.config.gating,
                key_dim=self.config.get("key_dim"),
                value_dim=self.config.get("value_dim"),
                zero_init=gc.zero_init,
                chunk_size=gc.chunk_size,
                name="attention",
            )
            out = attn(msa_act, msa_act, msa_mask[..., None].astype(msa_act.dtype))
        else:
            bias = mask_to_bias(msa_mask)[:, None, None, :].astype(jnp.float32)
            out = attention_for(self.config, gc, msa_act.shape[-1])(msa_act, msa_act, bias)
        return jnp.swapaxes(out, -2, -3)


class MSAColumnGlobalAttention(MSAColumnAttention):
    """`MSAColumnAttention` with global attention (the extra-MSA stack's column attention)."""

    use_global: bool = True
