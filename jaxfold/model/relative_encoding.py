"""AlphaFold-Multimer's relative position encoding over chains (Evans et al. 2021, Suppl. Alg. 1 feature set).

For residues i, j: the clipped residue-index offset (one extra bin, "different chain", when their `asym_id`s
differ), whether they belong to the same entity, and the clipped relative `sym_id` (one extra bin, "different
entity"), one-hot and concatenated (`[N_res, N_res, 2*max_relative_idx + 2 + 1 + 2*max_relative_chain + 2]`,
73 channels as shipped), then a linear map to the pair width. Without `use_chain_relative` it is the monomer
encoding of plain residue-index offsets.

Haiku scope: DeepMind's `EmbeddingsAndEvoformer._relative_encoding` method, which Haiku names
`evoformer/~_relative_encoding/position_activations`; the Flax module below carries that name.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxfold.model.primitives import Linear

SCOPE = "~_relative_encoding"


def relative_features(
    residue_index: jax.Array, asym_id: jax.Array, entity_id: jax.Array, sym_id: jax.Array, config
) -> jax.Array:
    """The one-hot relative features `[N_res, N_res, C]` (float32) of `[N_res]` ids, as AlphaFold builds them."""
    c = config
    max_idx = c.max_relative_idx
    offset = residue_index[:, None] - residue_index[None, :]
    clipped_offset = jnp.clip(offset + max_idx, 0, 2 * max_idx)
    if not c.use_chain_relative:
        return jax.nn.one_hot(clipped_offset.astype(jnp.int32), 2 * max_idx + 1)
    asym_same = asym_id[:, None] == asym_id[None, :]
    final_offset = jnp.where(asym_same, clipped_offset, 2 * max_idx + 1)
    rel_pos = jax.nn.one_hot(final_offset.astype(jnp.int32), 2 * max_idx + 2)
    entity_same = entity_id[:, None] == entity_id[None, :]
    max_chain = c.max_relative_chain
    rel_sym = sym_id[:, None] - sym_id[None, :]
    clipped_chain = jnp.clip(rel_sym + max_chain, 0, 2 * max_chain)
    final_chain = jnp.where(entity_same, clipped_chain, 2 * max_chain + 1)
    rel_chain = jax.nn.one_hot(final_chain.astype(jnp.int32), 2 * max_chain + 2)  # ids may be float
    return jnp.concatenate([rel_pos, entity_same.astype(rel_pos.dtype)[..., None], rel_chain], axis=-1)


class RelativeEncoding(nn.Module):
    """`(residue_index, asym_id, entity_id, sym_id)` `[N_res]` -> pair update `[N_res, N_res, c_z]` in `dtype`."""

    config: object  # model.embeddings_and_evoformer
    dtype: str = "float32"

    @nn.compact
    def __call__(self, residue_index, asym_id, entity_id, sym_id) -> jax.Array:
        rel_feat = relative_features(residue_index, asym_id, entity_id, sym_id, self.config)
        self.sow("intermediates", "rel_feat", rel_feat)
        return Linear(self.config.pair_channel, name="position_activations")(rel_feat.astype(self.dtype))
