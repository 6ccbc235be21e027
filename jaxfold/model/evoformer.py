"""The Evoformer block and its stacks (Jumper et al. 2021, Suppl. Algs. 6 and 18).

One `EvoformerIteration` updates the MSA `[N_seq, N_res, c_m]` and pair `[N_res, N_res, c_z]`
representations in AlphaFold's order: MSA row attention with pair bias, MSA column attention (global
attention in the extra-MSA variant), MSA transition, outer product mean, triangle multiplication outgoing
and incoming, triangle attention starting and ending node, pair transition. Each update passes through
dropout (shared along rows or columns as the sub-module's config says) before the residual add.

`evoformer_stack` runs `num_block` iterations with `nn.scan`, so parameters carry a leading layer axis
exactly like the official files (`evoformer_iteration/...` `[48, ...]`), and wraps the block in
`nn.remat` when `global_config.use_remat` is set.
"""

from __future__ import annotations

import jax
import flax.linen as nn

from jaxfold.model.msa_attention import (
    MSAColumnAttention, MSAColumnGlobalAttention, MSARowAttentionWithPairBias)
from jaxfold.model.outer_product_mean import OuterProductMean
from jaxfold.model.primitives import dropout
from jaxfold.model.transition import Transition
from jaxfold.model.triangle_attention import TriangleAttention
from jaxfold.model.triangle_multiplication import TriangleMultiplication


def residual_update(module: nn.Module, parent: nn.Module, act, update, is_training: bool):
    """`act + dropout(update)` with the sub-module's dropout rate and shared-dropout orientation."""
    config, gc = module.config, parent.global_config
    rate = 0.0 if gc.deterministic or not is_training else float(config.dropout_rate)
    if rate == 0.0:
        return act + update
    broadcast_dim = None
    if config.shared_dropout:
        broadcast_dim = 0 if config.orientation == "per_row" else 1
    return act + dropout(update, rate, parent.make_rng("dropout"), broadcast_dim)


class EvoformerIteration(nn.Module):
    """One Evoformer block. Called as a scan body: `(msa, pair), None = block((msa, pair), msa_mask, pair_mask)`.

    msa `[N_seq, N_res, c_m]`, pair `[N_res, N_res, c_z]`, msa_mask `[N_seq, N_res]`,
    pair_mask `[N_res, N_res]`.
    """

    config: object  # the `evoformer` section of the model config
    global_config: object
    is_extra_msa: bool = False
    is_training: bool = False

    @nn.compact
    def __call__(self, activations, msa_mask, pair_mask):
        c, gc, train = self.config, self.global_config, self.is_training
        msa, pair = activations

        def add(module, act, *args):
            return residual_update(module, self, act, module(*args), train)

        row = MSARowAttentionWithPairBias(c.msa_row_attention_with_pair_bias, gc,
                                          name="msa_row_attention_with_pair_bias")
        msa = add(row, msa, msa, msa_mask, pair)
        if self.is_extra_msa:
            column = MSAColumnGlobalAttention(c.msa_column_attention, gc, name="msa_column_global_attention")
        else:
            column = MSAColumnAttention(c.msa_column_attention, gc, name="msa_column_attention")
        msa = add(column, msa, msa, msa_mask)
        msa_transition = Transition(c.msa_transition, gc, name="msa_transition")
        msa = add(msa_transition, msa, msa, msa_mask)
        opm = OuterProductMean(c.outer_product_mean, gc, num_output_channel=pair.shape[-1],
                               name="outer_product_mean")
        pair = add(opm, pair, msa, msa_mask)
        for name in ("triangle_multiplication_outgoing", "triangle_multiplication_incoming"):
            module = TriangleMultiplication(c[name], gc, name=name)
            pair = add(module, pair, pair, pair_mask)
        for name in ("triangle_attention_starting_node", "triangle_attention_ending_node"):
            module = TriangleAttention(c[name], gc, name=name)
            pair = add(module, pair, pair, pair_mask)
        pair_transition = Transition(c.pair_transition, gc, name="pair_transition")
        pair = add(pair_transition, pair, pair, pair_mask)
        return (msa, pair), None


def scanned_stack(block_cls, num_block: int, use_remat: bool):
    """`block_cls` repeated `num_block` times with stacked parameters (leading layer axis).

    The block's call signature must be `(carry, *broadcast_args) -> (carry, None)`.
    """
    if use_remat:
        block_cls = nn.remat(block_cls, prevent_cse=False)
    return nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True, "dropout": True},
                   in_axes=nn.broadcast, length=num_block)


def evoformer_stack(config, global_config, num_block: int, is_extra_msa: bool, is_training: bool,
                    name: str):
    """The scanned Evoformer (or extra-MSA) stack as a Flax module named `name`.

    Usage: `(msa, pair), _ = evoformer_stack(...)((msa, pair), msa_mask, pair_mask)`.
    """
    stack = scanned_stack(EvoformerIteration, num_block, bool(global_config.use_remat))
    return stack(config, global_config, is_extra_msa=is_extra_msa, is_training=is_training, name=name)
