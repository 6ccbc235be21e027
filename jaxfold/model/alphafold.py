"""The whole AlphaFold2 monomer model: trunk, structure module, heads, and recycling.

`AlphaFold` (scope `alphafold`, the root of the official parameter files) holds one
`AlphaFoldIteration` (`alphafold_iteration`) that is applied `num_recycle + 1` times. The recycling
passes run inside `nn.while_loop` without gradient, so the model compiles once whatever the number of
iterations; the last pass is differentiable. This is the training path; prediction runs the same
iteration pass by pass through `jaxfold.model.predict` (progress, memory, chunking).

Input `batch`: DeepMind's processed features with a leading recycling axis (`features.npz` layout):
slice `i` is the MSA sample of recycling iteration `i` when `resample_msa_in_recycling`, else slice 0 is
used throughout. `batch['num_iter_recycling']` (optional, `[R]` int) lowers the number of recycling
iterations at run time (training samples it), capped by `config.num_recycle`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfold.common import residue_constants
from jaxfold.model.embeddings_and_evoformer import EmbeddingsAndEvoformer
from jaxfold.model.heads import HEADS
from jaxfold.model.structure_module import StructureModule
from jaxfold.parallel.dap import NO_DAP, Dap, vary_like


def apply_heads(config, representations: dict, batch: dict, is_training: bool) -> dict:
    """Every head with a non-zero loss weight, created in the calling module's scope (as AlphaFold's
    `alphafold_iteration/<head>_head/...`); heads with zero weight are not built, so `_ptm` parameters
    carry the PAE head and the others do not. Call from inside a compact method."""
    gc = config.global_config
    return {
        head_name: cls(config.heads[head_name], gc, name=scope)(representations, batch, is_training)
        for head_name, (cls, scope) in HEADS.items()
        if config.heads[head_name].weight
    }


class AlphaFoldIteration(nn.Module):
    """One pass: trunk -> structure module -> heads.

    batch: one iteration's features (no recycling axis) plus `prev_*` recycling inputs.
    Returns a nested dict: `representations/{single,pair,msa,msa_first_row,structure_module}`,
    `structure_module/...`, and (with `compute_heads`) each head's outputs under its config name.
    `compute_heads=False` stops after the structure module: the recycling passes of prediction need only
    the recycled outputs, and `AlphaFoldHeads` computes the heads of the last pass.
    """

    config: object  # cfg.model
    is_training: bool = False
    dap: Dap = NO_DAP  # DAP over the trunk's stacks (inside shard_map); the rest runs replicated
    compute_heads: bool = True

    @nn.compact
    def __call__(self, batch: dict) -> dict:
        c = self.config
        gc = c.global_config
        representations = EmbeddingsAndEvoformer(
            c.embeddings_and_evoformer, gc, self.is_training, self.dap, name="evoformer"
        )(batch)
        structure = StructureModule(c.heads.structure_module, gc, self.is_training, name="structure_module")(
            representations, batch
        )
        representations = dict(representations, structure_module=structure.pop("act"))
        ret = {"representations": representations, "structure_module": structure}
        if self.compute_heads:
            # After the structure module: the pLDDT head reads its final activations.
            ret.update(apply_heads(c, representations, batch, self.is_training))
        return ret


class AlphaFoldHeads(nn.Module):
    """The heads of `AlphaFoldIteration` alone, applied to a finished pass's representations.

    Apply with the iteration's parameters (`params['alphafold_iteration']`): the heads' scopes are the same.
    """

    config: object  # cfg.model

    @nn.compact
    def __call__(self, representations: dict, batch: dict) -> dict:
        return apply_heads(self.config, representations, batch, is_training=False)


def initial_recycling_inputs(config, num_res: int, pair_dtype=None) -> dict:
    """The recycling inputs of the first pass (all zeros): `prev_pos [N_res, 37, 3]` float32,
    `prev_msa_first_row [N_res, c_m]` float32 and `prev_pair [N_res, N_res, c_z]` in `pair_dtype`: the dtype
    the trunk returns its pair in, so every pass sees the same input types (default the activation dtype,
    as the monomer trunk; the multimer trunk returns float32)."""
    emb = config.embeddings_and_evoformer
    pair_dtype = jnp.dtype(config.global_config.dtype if pair_dtype is None else pair_dtype)
    return {
        "prev_pos": jnp.zeros((num_res, residue_constants.atom_type_num, 3), jnp.float32),
        "prev_msa_first_row": jnp.zeros((num_res, emb.msa_channel), jnp.float32),
        "prev_pair": jnp.zeros((num_res, num_res, emb.pair_channel), pair_dtype),
    }


def recycling_outputs(ret: dict) -> dict:
    """What the next recycling iteration sees; no gradient flows through recycling."""
    prev = {
        "prev_pos": ret["structure_module"]["final_atom_positions"],
        "prev_msa_first_row": ret["representations"]["msa_first_row"],
        "prev_pair": ret["representations"]["pair"],
    }
    return jax.tree_util.tree_map(jax.lax.stop_gradient, prev)


def recycle(module: nn.Module, iteration: nn.Module, cond, body, carry):
    """The recycling passes: `nn.while_loop(cond, body, iteration, carry)` with a fresh dropout key per pass,
    from inside `module`'s compact method. While `module` initialises, one `body` call instead: a
    `while_loop` cannot create the iteration's parameters (it needs them already there)."""
    if module.is_initializing():
        return body(iteration, carry)
    return nn.while_loop(cond, body, iteration, carry, split_rngs={"dropout": True})


class AlphaFold(nn.Module):
    """AlphaFold2 with recycling. `batch` arrays carry a leading recycling axis (see module doc)."""

    config: object  # cfg.model
    is_training: bool = False
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, batch: dict) -> dict:
        c = self.config
        num_res = batch["aatype"].shape[1]
        iteration = AlphaFoldIteration(c, self.is_training, self.dap, name="alphafold_iteration")
        features = {k: v for k, v in batch.items() if k != "num_iter_recycling"}

        def iteration_batch(idx):
            idx = idx if c.resample_msa_in_recycling else 0
            return jax.tree_util.tree_map(lambda x: jax.lax.dynamic_index_in_dim(x, idx, 0, False), features)

        prev = initial_recycling_inputs(c, num_res)
        num_iter = c.num_recycle
        if "num_iter_recycling" in batch:
            num_iter = jnp.minimum(batch["num_iter_recycling"][0], c.num_recycle)

        def body(module, carry):
            idx, prev = carry
            ret = module(dict(iteration_batch(idx), **prev))
            return idx + 1, recycling_outputs(ret)

        if c.num_recycle:
            prev = vary_like(prev, features)  # under shard_map the carry varies like the batch
            _, prev = recycle(self, iteration, lambda module, carry: carry[0] < num_iter, body, (jnp.asarray(0), prev))
        return iteration(dict(iteration_batch(num_iter), **prev))
