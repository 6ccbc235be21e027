"""The plumbing every stack shares: scanned blocks with stacked parameters, remat policies, the residual
update with AlphaFold's shared dropout, and running a stack split over devices (DAP).

`split_stack_call` is the one pad -> scatter -> stack -> gather -> unpad sequence: the Evoformer and extra-MSA
stacks (MSA + pair) and the template pair stack (pair) run through it, so sharded and unsharded code read
the same.
"""

from __future__ import annotations

from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfold.parallel.dap import NO_DAP, Dap, local_dropout_mask, vary_like


def residual_update(
    module: nn.Module,
    parent: nn.Module,
    act,
    update,
    is_training: bool,
    dap: Dap = NO_DAP,
    split_axis: int | None = None,
):
    """`act + dropout(update)` with the sub-module's dropout rate and shared-dropout orientation.

    Under DAP, `split_axis` is the axis of `update` that is sliced over devices; the dropout mask is drawn
    at the global shape and sliced, so sharded and unsharded training drop the same entries.
    """
    config, gc = module.config, parent.global_config
    rate = 0.0 if gc.deterministic or not is_training else float(config.dropout_rate)
    if rate == 0.0:
        return act + update
    broadcast_dim = None
    if config.shared_dropout:
        broadcast_dim = 0 if config.orientation == "per_row" else 1
    keep_rate = 1.0 - rate
    keep = local_dropout_mask(dap, parent.make_rng("dropout"), keep_rate, update.shape, split_axis, broadcast_dim)
    return act + keep.astype(update.dtype) * update / jnp.asarray(keep_rate, update.dtype)


# What a rematerialised block keeps from its forward pass for the backward (jax.checkpoint policies):
# 'nothing' recomputes the whole block (least memory); 'dots' keeps every matmul output; 'dots_no_batch'
# keeps the unbatched ones (the projections, not the attention logits or the triangle products);
# 'offload_dots' keeps those in pinned host memory instead of on the device.
REMAT_POLICIES = {
    "nothing": lambda: jax.checkpoint_policies.nothing_saveable,
    "dots": lambda: jax.checkpoint_policies.dots_saveable,
    "dots_no_batch": lambda: jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "offload_dots": lambda: jax.checkpoint_policies.offload_dot_with_no_batch_dims("device", "pinned_host"),
}


def scanned_stack(block_cls, num_block: int, use_remat: bool, remat_policy: str = "nothing"):
    """`block_cls` repeated `num_block` times with stacked parameters (leading layer axis).

    The block's call signature must be `(carry, *broadcast_args) -> (carry, None)`.
    """
    if use_remat:
        if remat_policy not in REMAT_POLICIES:
            raise ValueError(f"unknown remat_policy {remat_policy!r}; expected one of {sorted(REMAT_POLICIES)}")
        block_cls = nn.remat(block_cls, prevent_cse=False, policy=REMAT_POLICIES[remat_policy]())
    return nn.scan(
        block_cls,
        variable_axes={"params": 0},
        split_rngs={"params": True, "dropout": True},
        in_axes=nn.broadcast,
        length=num_block,
    )


def split_stack_call(run: Callable, dap: Dap, arrays: tuple, masks: tuple, *vary_refs) -> tuple:
    """`run(arrays, masks)` on whole, replicated arrays whose first two axes are `[rows, N_res]` (MSA
    `[N_seq, N_res, c]`, pair `[N_res, N_res, c_z]`) and their masks; under DAP the arrays and masks are
    padded to a multiple of the DAP size on both axes, the arrays scattered along rows, run, gathered and
    unpadded. Padded rows/columns carry zero masks, so valid outputs are unchanged (masked keys get exactly
    zero attention weight, masked residues contribute nothing to the triangle and outer products).
    `vary_refs` (e.g. a dropout key) are values the loop body mixes in; see `vary_like`.
    """
    shapes = [a.shape[:2] for a in arrays]
    masks = tuple(dap.pad_to_multiple(m, (0, 1)) for m in masks)
    arrays = tuple(dap.scatter(dap.pad_to_multiple(a, (0, 1)), 0) for a in arrays)
    arrays = vary_like(arrays, *arrays, *masks, *vary_refs)
    arrays = run(arrays, masks)
    return tuple(dap.gather_replicated(a, 0)[:rows, :cols] for a, (rows, cols) in zip(arrays, shapes))


def apply_stack(stack: nn.Module, dap: Dap, msa, pair, msa_mask, pair_mask, *vary_refs):
    """Run a scanned Evoformer/extra-MSA stack; under DAP pad to the DAP size, slice rows, run, gather, unpad.

    msa `[N_seq, N_res, c]`, pair `[N_res, N_res, c_z]` and both masks whole (replicated); returns whole,
    replicated outputs. Padded rows/columns carry zero masks, so valid outputs are unchanged (masked keys
    get exactly zero attention weight, masked residues contribute nothing to the triangle and outer products).
    `vary_refs` (e.g. a dropout key) are values the loop body mixes in; see `vary_like`.
    """
    return split_stack_call(
        lambda arrays, masks: stack(arrays, *masks)[0], dap, (msa, pair), (msa_mask, pair_mask), *vary_refs
    )
