"""The Evoformer block and its stacks (Jumper et al. 2021, Suppl. Algs. 6 and 18).

One `EvoformerIteration` updates the MSA `[N_seq, N_res, c_m]` and pair `[N_res, N_res, c_z]`
representations in AlphaFold's order: MSA row attention with pair bias, MSA column attention (global
attention in the extra-MSA variant), MSA transition, outer product mean (first of all when the config's
`outer_product_mean.first` is set, as in AlphaFold-Multimer), triangle multiplication outgoing
and incoming, triangle attention starting and ending node, pair transition. Each update passes through
dropout (shared along rows or columns as the sub-module's config says) before the residual add.

`evoformer_stack` runs `num_block` iterations with `nn.scan`, so parameters carry a leading layer axis
exactly like the official files (`evoformer_iteration/...` `[48, ...]`), and wraps the block in
`nn.remat` when `global_config.use_remat` is set, saving what `global_config.remat_policy` names
(`REMAT_POLICIES`; set by the training presets, swept by `bench/train_step.py`). `trunk_stack` builds and
runs the trunk's extra-MSA or Evoformer stack: the one copy the monomer and multimer trunks share.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxfold.model.attention import pair_bias_in_chunks
from jaxfold.model.inplace import add_in_place, pure
from jaxfold.model.msa_attention import MSAColumnAttention, MSAColumnGlobalAttention, MSARowAttentionWithPairBias
from jaxfold.model.outer_product_mean import OuterProductMean, right_projection
from jaxfold.model.stacks import apply_stack, residual_update, scanned_stack
from jaxfold.model.transition import Transition
from jaxfold.model.triangle_attention import TriangleAttention
from jaxfold.model.triangle_multiplication import TriangleMultiplication, whole_right_operand
from jaxfold.parallel.dap import NO_DAP, Dap


class EvoformerIteration(nn.Module):
    """One Evoformer block. Called as a scan body: `(msa, pair), None = block((msa, pair), msa_mask, pair_mask)`.

    msa `[N_seq, N_res, c_m]`, pair `[N_res, N_res, c_z]`, msa_mask `[N_seq, N_res]`,
    pair_mask `[N_res, N_res]`.

    Under DAP (`dap.enabled`, inside `shard_map`): msa arrives and leaves split along sequences
    `[N_seq/d, N_res, c_m]`, pair along rows `[N_res/d, N_res, c_z]`; the masks are whole (replicated).
    The block switches layouts as DESIGN.md's plan says: the MSA goes to residue slices for column
    attention, transition and outer product mean and back (2 all-to-alls); the pair goes to column slices
    for the incoming triangle update and the ending-node attention and back (4 all-to-alls).
    """

    config: object  # the `evoformer` section of the model config
    global_config: object
    is_extra_msa: bool = False
    is_training: bool = False
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, activations, msa_mask, pair_mask):
        c, gc, train, dap = self.config, self.global_config, self.is_training, self.dap
        msa, pair = activations
        if updates_in_place(self, gc, train, dap):
            return in_place_block(self, msa, pair, msa_mask, pair_mask), None
        rows, cols = 0, 1
        msa_mask_rows, msa_mask_cols = dap.scatter(msa_mask, rows), dap.scatter(msa_mask, cols)
        pair_mask_rows, pair_mask_cols = dap.scatter(pair_mask, rows), dap.scatter(pair_mask, cols)

        def add(module, act, split_axis, *args):
            return residual_update(module, self, act, module(*args), train, dap, split_axis)

        opm = OuterProductMean(
            c.outer_product_mean, gc, num_output_channel=pair.shape[-1], dap=dap, name="outer_product_mean"
        )
        opm_first = bool(c.outer_product_mean.get("first", False))
        if opm_first:
            # AlphaFold-Multimer order: the MSA informs the pair before the MSA updates (2 extra MSA
            # all-to-alls under DAP, since the outer product needs residue slices).
            msa = dap.row_to_col(msa)
            pair = add(opm, pair, rows, msa, msa_mask_cols, msa_mask)
            msa = dap.col_to_row(msa)

        row = MSARowAttentionWithPairBias(
            c.msa_row_attention_with_pair_bias, gc, dap, name="msa_row_attention_with_pair_bias"
        )
        msa = add(row, msa, rows, msa, msa_mask_rows, pair)
        msa = dap.row_to_col(msa)
        if self.is_extra_msa:
            column = MSAColumnGlobalAttention(c.msa_column_attention, gc, name="msa_column_global_attention")
        else:
            column = MSAColumnAttention(c.msa_column_attention, gc, name="msa_column_attention")
        msa = add(column, msa, cols, msa, msa_mask_cols)
        msa_transition = Transition(c.msa_transition, gc, name="msa_transition")
        msa = add(msa_transition, msa, cols, msa, msa_mask_cols)
        if not opm_first:
            pair = add(opm, pair, rows, msa, msa_mask_cols, msa_mask)
        # Independent of the pair updates below, so XLA can overlap this all-to-all with them.
        msa = dap.col_to_row(msa)

        outgoing = TriangleMultiplication(
            c.triangle_multiplication_outgoing, gc, dap, name="triangle_multiplication_outgoing"
        )
        pair = add(outgoing, pair, rows, pair, pair_mask_rows)
        pair = dap.row_to_col(pair)
        incoming = TriangleMultiplication(
            c.triangle_multiplication_incoming, gc, dap, name="triangle_multiplication_incoming"
        )
        pair = add(incoming, pair, cols, pair, pair_mask_cols)
        pair = dap.col_to_row(pair)
        starting = TriangleAttention(
            c.triangle_attention_starting_node, gc, dap, name="triangle_attention_starting_node"
        )
        pair = add(starting, pair, rows, pair, pair_mask_rows)
        pair = dap.row_to_col(pair)
        ending = TriangleAttention(c.triangle_attention_ending_node, gc, dap, name="triangle_attention_ending_node")
        pair = add(ending, pair, cols, pair, pair_mask_cols)
        pair_transition = Transition(c.pair_transition, gc, name="pair_transition")
        pair = add(pair_transition, pair, cols, pair, pair_mask_cols)
        pair = dap.col_to_row(pair)
        return (msa, pair), None


def updates_in_place(module: nn.Module, global_config, is_training: bool, dap: Dap) -> bool:
    """Inference with a chunk size on one device updates the MSA and pair in place (`jaxfold.model.inplace`);
    training (dropout, gradients), DAP and initialisation (parameters not yet there) take the plain path."""
    chunk = global_config.chunk_size
    return isinstance(chunk, int) and chunk > 0 and not is_training and not dap.enabled and not module.is_initializing()


def in_place_block(block: EvoformerIteration, msa, pair, msa_mask, pair_mask):
    """One Evoformer block (same sub-modules, names and order as `EvoformerIteration`) with every residual
    update written into the MSA / pair slice by slice: the block holds the MSA, the pair and one slice of
    temporaries, plus the operands every slice needs whole (a projected bias `[H, N, N]`, a triangle
    product's other operand). Row-wise updates run on row slices, column-wise ones on column slices."""
    c, gc = block.config, block.global_config
    chunk, kernels = gc.chunk_size, gc.kernels
    rows, cols = 0, 1

    opm = OuterProductMean(c.outer_product_mean, gc, num_output_channel=pair.shape[-1], name="outer_product_mean")

    def outer_product_mean(pair, msa):
        right = right_projection(opm.variables["params"], msa, msa_mask, kernels, chunk)
        return add_in_place(
            lambda _, m, mask: pure(opm)(m, mask, msa_mask, right=right),
            pair,
            rows,
            chunk,
            [(msa, cols), (msa_mask, cols)],
        )

    opm_first = bool(c.outer_product_mean.get("first", False))  # AlphaFold-Multimer's order
    if opm_first:
        pair = outer_product_mean(pair, msa)
    row = MSARowAttentionWithPairBias(c.msa_row_attention_with_pair_bias, gc, name="msa_row_attention_with_pair_bias")
    params = row.variables["params"]
    bias = pair_bias_in_chunks(pair, params["feat_2d_norm"], params["feat_2d_weights"], chunk, kernels)
    msa = add_in_place(
        lambda m, mask: pure(row)(m, mask, None, nonbatched_bias=bias), msa, rows, chunk, [(msa_mask, rows)]
    )
    if block.is_extra_msa:
        column = MSAColumnGlobalAttention(c.msa_column_attention, gc, name="msa_column_global_attention")
    else:
        column = MSAColumnAttention(c.msa_column_attention, gc, name="msa_column_attention")
    msa = add_in_place(pure(column), msa, cols, chunk, [(msa_mask, cols)])
    msa_transition = Transition(c.msa_transition, gc, name="msa_transition")
    msa = add_in_place(pure(msa_transition), msa, rows, chunk, [(msa_mask, rows)])
    if not opm_first:
        pair = outer_product_mean(pair, msa)
    pair = in_place_pair_updates(c, gc, pair, pair_mask, PAIR_UPDATES_EVOFORMER)
    return msa, pair


# The pair stack's updates in AlphaFold's order: (sub-module name, the axis its slices run along).
PAIR_UPDATES_EVOFORMER = (
    ("triangle_multiplication_outgoing", 0),
    ("triangle_multiplication_incoming", 1),
    ("triangle_attention_starting_node", 0),
    ("triangle_attention_ending_node", 1),
    ("pair_transition", 0),
)
PAIR_UPDATES_TEMPLATE = (
    ("triangle_attention_starting_node", 0),
    ("triangle_attention_ending_node", 1),
    ("triangle_multiplication_outgoing", 0),
    ("triangle_multiplication_incoming", 1),
    ("pair_transition", 0),
)


def in_place_pair_updates(config, global_config, pair, pair_mask, updates):
    """The pair updates of an Evoformer or template pair block, each written into the pair in place.
    Call from inside the block's compact method (the sub-modules are created in its scope, by name)."""
    chunk, kernels = global_config.chunk_size, global_config.kernels
    for name, split in updates:
        if name.startswith("triangle_attention"):
            module = TriangleAttention(config[name], global_config, name=name)
            params = module.variables["params"]
            bias = pair_bias_in_chunks(pair, params["query_norm"], params["feat_2d_weights"], chunk, kernels)
            if split == 1:  # the ending node attends along columns: its bias is the transposed one
                bias = jnp.swapaxes(bias, 1, 2)
            pair = add_in_place(
                lambda p, mask, f=pure(module), b=bias: f(p, mask, nonbatched_bias=b),
                pair,
                split,
                chunk,
                [(pair_mask, split)],
            )
        elif name.startswith("triangle_multiplication"):
            module = TriangleMultiplication(config[name], global_config, name=name)
            right = whole_right_operand(module.variables["params"], pair, pair_mask, kernels, chunk)
            pair = add_in_place(
                lambda p, mask, f=pure(module), r=right: f(p, mask, right=r), pair, split, chunk, [(pair_mask, split)]
            )
        else:
            module = Transition(config[name], global_config, name=name)
            pair = add_in_place(pure(module), pair, split, chunk, [(pair_mask, split)])
    return pair


def evoformer_stack(
    config, global_config, num_block: int, is_extra_msa: bool, is_training: bool, name: str, dap: Dap = NO_DAP
):
    """The scanned Evoformer (or extra-MSA) stack as a Flax module named `name`.

    Usage: `(msa, pair), _ = evoformer_stack(...)((msa, pair), msa_mask, pair_mask)`.
    """
    stack = scanned_stack(
        EvoformerIteration, num_block, bool(global_config.use_remat), getattr(global_config, "remat_policy", "nothing")
    )
    return stack(config, global_config, is_extra_msa=is_extra_msa, is_training=is_training, dap=dap, name=name)


def trunk_stack(
    trunk: nn.Module, msa, pair, msa_mask, pair_mask, vary_refs: tuple = (), *, is_extra_msa: bool
) -> tuple:
    """One of the trunk's two stacks, built in the scope of `trunk` and run on whole (replicated) inputs
    through `apply_stack` (split over the DAP axis when `trunk.dap` is enabled). Call from inside the
    trunk's compact method; the monomer and the multimer trunk both do (the same stacks in both models).

    trunk: the calling trunk module; its `config` (`model.embeddings_and_evoformer`), `global_config`,
      `is_training` and `dap` configure the stack.
    is_extra_msa: the extra-MSA stack (scope `extra_msa_stack`, `extra_msa_stack_num_block` blocks,
      global column attention) instead of the Evoformer stack (`evoformer_iteration`, `evoformer_num_block`).
    msa `[N_seq, N_res, c]`, pair `[N_res, N_res, c_z]` in the activation dtype; msa_mask `[N_seq, N_res]`,
    pair_mask `[N_res, N_res]` (cast to the activation dtype here); vary_refs: see `apply_stack`.
    Returns the updated `(msa, pair)`; a stack of no blocks returns its inputs and holds no parameters.
    """
    c, gc = trunk.config, trunk.global_config
    num_block = c.extra_msa_stack_num_block if is_extra_msa else c.evoformer_num_block
    if not num_block:
        return msa, pair
    name = "extra_msa_stack" if is_extra_msa else "evoformer_iteration"
    stack = evoformer_stack(c.evoformer, gc, num_block, is_extra_msa, trunk.is_training, name, trunk.dap)
    dtype = jnp.dtype(gc.dtype)
    return apply_stack(stack, trunk.dap, msa, pair, msa_mask.astype(dtype), pair_mask.astype(dtype), *vary_refs)
