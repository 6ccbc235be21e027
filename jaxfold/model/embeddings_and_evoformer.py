"""The AlphaFold trunk: input embeddings, recycling, templates, extra-MSA stack and Evoformer stack.

Mirrors DeepMind's `EmbeddingsAndEvoformer` (Haiku name `evoformer`) so the parameter tree maps 1:1 onto
the official files. Input: one recycling iteration's processed features (no leading recycling axis) plus
`prev_pos [N_res, 37, 3]`, `prev_msa_first_row [N_res, c_m]`, `prev_pair [N_res, N_res, c_z]`.
Output: `single [N_res, c_s]`, `pair [N_res, N_res, c_z]`, `msa [N_seq, N_res, c_m]`, `msa_first_row`
(pair and msa in the activation dtype, single and msa_first_row float32).

Activations between the embedders and the end of the Evoformer stack are in `global_config.dtype`
(float32 or bfloat16); embeddings are float32. Module-boundary activations are sown into the
`intermediates` collection (`template_embedding_output`, `extra_msa_stack_input/output`,
`evoformer_stack_input/output`) for tests and debugging.

Under DAP (inside `shard_map` with `dap.enabled`) the embeddings are computed on every device, the stacks
run on slices (MSA rows, pair rows) padded to a multiple of the DAP size, and their outputs are gathered
back, so everything outside the stacks sees whole, replicated tensors.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from jaxfold.model import embedders
from jaxfold.model.evoformer import trunk_stack, updates_in_place
from jaxfold.model.primitives import Linear
from jaxfold.model.template import TemplateEmbedding
from jaxfold.parallel.dap import NO_DAP, Dap, dropout_rng_refs


class EmbeddingsAndEvoformer(nn.Module):
    config: object  # model.embeddings_and_evoformer
    global_config: object
    is_training: bool = False
    dap: Dap = NO_DAP

    @nn.compact
    def __call__(self, batch: dict) -> dict:
        c, gc = self.config, self.global_config
        dtype = jnp.dtype(gc.dtype)
        seq_mask = batch["seq_mask"]
        mask_2d = seq_mask[:, None] * seq_mask[None, :]
        # Input, recycled and relative-position embeddings of the pair, built in float32 and stored in the
        # activation dtype (with a chunk size a slice of rows at a time, into the recycled pair's buffer).
        pair = embedders.pair_embedding(batch, c, gc.kernels, dtype, gc.chunk_size)
        in_place = updates_in_place(self, gc, self.is_training, self.dap)  # long chains: every update in place

        if c.template.enabled:
            template_batch = {k: batch[k] for k in batch if k.startswith("template_")}
            templates = TemplateEmbedding(c.template, gc, self.is_training, self.dap, name="template_embedding")
            if in_place:  # added into the pair
                pair = templates(pair, template_batch, mask_2d.astype(dtype), in_place=True)
            else:
                template_update = templates(pair, template_batch, mask_2d.astype(dtype))
                self.sow("intermediates", "template_embedding_output", template_update)
                pair = pair + template_update

        # The MSA embeddings' buffers are made from the pair before them (`after`): made from the features
        # alone, XLA may place them at the program's start (the CPU compiler did: the main MSA's buffer then
        # lived through the extra-MSA stack, the stage with the highest peak).
        extra_msa = embedders.extra_msa_embedding(batch, c, dtype, gc.chunk_size, after=pair if in_place else None)
        # Under shard_map, loop carries must already vary over whatever the loop body mixes in.
        vary_refs = dropout_rng_refs(self, self.is_training, gc)
        self.sow("intermediates", "extra_msa_stack_input", (extra_msa, pair))
        extra_msa, pair = trunk_stack(
            self, extra_msa, pair, batch["extra_msa_mask"], mask_2d, vary_refs, is_extra_msa=True
        )
        self.sow("intermediates", "extra_msa_stack_output", (extra_msa, pair))

        # The MSA is embedded only now: it is not needed before the Evoformer, and it is float32 until cast, so
        # embedding it first kept [N_seq, N, c_m] float32 alive through the templates and the extra-MSA stack
        # (5 GiB at 10,240 residues).
        msa = embedders.msa_embedding(batch, c, gc.kernels, dtype, gc.chunk_size, after=pair if in_place else None)
        msa_mask = batch["msa_mask"]
        num_sequences = batch["msa_feat"].shape[0]
        if c.template.enabled and c.template.embed_torsion_angles:
            template_rows, template_row_mask = embedders.template_single_embedding(batch, c, gc.zero_init)
            msa = jnp.concatenate([msa, template_rows.astype(dtype)], axis=0)
            msa_mask = jnp.concatenate([msa_mask, template_row_mask.astype(msa_mask.dtype)], axis=0)
        self.sow("intermediates", "evoformer_stack_input", (msa, pair, msa_mask))
        msa, pair = trunk_stack(self, msa, pair, msa_mask, mask_2d, vary_refs, is_extra_msa=False)
        self.sow("intermediates", "evoformer_stack_output", (msa, pair))

        # The pair and MSA stay in the activation dtype: their consumers (heads, structure module, the next
        # recycling pass) compute in float32 from them, and a float32 copy of a bfloat16 pair is exact but
        # twice the memory of the largest tensor of the model.
        msa_first_row = msa[0].astype(jnp.float32)
        single = Linear(c.seq_channel, name="single_activations")(msa_first_row)
        return {"single": single, "pair": pair, "msa": msa[:num_sequences], "msa_first_row": msa_first_row}
