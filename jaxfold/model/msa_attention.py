"""The three MSA attentions of the Evoformer (Jumper et al. 2021, Suppl. Algs. 7, 8, 19).

Each returns the residual update `[N_seq, N_res, c_m]` (before dropout and the residual add), as AlphaFold's
modules do. `config` is the sub-module's section of the model config; `global_config` the model's
`global_config`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import flax.linen as nn
import numpy as np

from jaxfold.model.attention import Attention, GlobalAttention, mask_to_bias
from jaxfold.model.chunking import chunked
from jaxfold.model.primitives import LayerNorm, layer_norm
from jaxfold.parallel.dap import NO_DAP, Dap


def pair_bias(module: nn.Module, pair_act: jax.Array, num_head: int, kernels: str) -> jax.Array:
    """Per-head attention bias from the pair representation: LayerNorm then a linear map.

    pair_act `[N, N, c_z]` -> `[H, N, N]`. Creates `feat_2d_norm`-style params in the caller's scope, so it
    must be called from inside the caller's compact method; the norm's name differs per caller.
    """
    c_z = pair_act.shape[-1]
    weights = module.param("feat_2d_weights", nn.initializers.normal(1.0 / np.sqrt(c_z)), (c_z, num_head))
    return jnp.einsum("qkc,ch->hqk", pair_act, weights.astype(pair_act.dtype))


def pair_bias_in_chunks(pair_act: jax.Array, norm_params: dict, feat_2d_weights: jax.Array, chunk_size: int,
                        kernels: str) -> jax.Array:
    """`pair_bias` of the layer-normed pair from the parameters, `chunk_size` pair rows at a time, so no
    normalised copy of the whole pair exists: pair_act `[N, N, c_z]` -> `[H, N, N]` (in-place inference)."""

    def rows(pair_rows):
        normed = layer_norm(pair_rows, norm_params["scale"], norm_params["offset"], kernels=kernels)
        return jnp.einsum("qkc,ch->hqk", normed, feat_2d_weights.astype(normed.dtype))

    return chunked(rows, chunk_size, batch_axes=(0,), out_axis=1)(pair_act)


def attention_for(config, global_config, output_dim: int) -> Attention:
    return Attention(
        num_head=config.num_head, output_dim=output_dim, gating=config.gating,
        key_dim=config.get("key_dim"), value_dim=config.get("value_dim"),
        zero_init=global_config.zero_init, chunk_size=global_config.chunk_size,
        kernels=global_config.kernels, name="attention")


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
        msa_act = jnp.swapaxes(msa_act, -2, -3)
        msa_mask = jnp.swapaxes(msa_mask, -1, -2)
        msa_act = LayerNorm(gc.kernels, name="query_norm")(msa_act)
        if self.use_global:
            attn = GlobalAttention(
                num_head=self.config.num_head, output_dim=msa_act.shape[-1], gating=self.config.gating,
                key_dim=self.config.get("key_dim"), value_dim=self.config.get("value_dim"),
                zero_init=gc.zero_init, chunk_size=gc.chunk_size, name="attention")
            out = attn(msa_act, msa_act, msa_mask[..., None].astype(msa_act.dtype))
        else:
            bias = mask_to_bias(msa_mask)[:, None, None, :].astype(jnp.float32)
            out = attention_for(self.config, gc, msa_act.shape[-1])(msa_act, msa_act, bias)
        return jnp.swapaxes(out, -2, -3)


class MSAColumnGlobalAttention(MSAColumnAttention):
    """`MSAColumnAttention` with global attention (the extra-MSA stack's column attention)."""

    use_global: bool = True
