"""Input embedders of the AlphaFold trunk (Jumper et al. 2021, Suppl. Algs. 3, 4, 32, and 2 lines 14-16).

Each function creates its layers in the *calling* module's scope (call it from inside a compact method),
because the official parameter files keep them directly under `evoformer/` (`preprocess_1d`,
`prev_pos_linear`, `pair_activiations` [sic], `extra_msa_activations`, `template_single_embedding`, ...).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxfold.common import all_atom
from jaxfold.model.distogram import dgram_from_positions
from jaxfold.model.primitives import LayerNorm, Linear


def input_embedding(batch: dict, c) -> tuple[jax.Array, jax.Array]:
    """target_feat `[N_res, 22]`, msa_feat `[N_seq, N_res, 49]` -> msa `[N_seq, N_res, c_m]`, pair `[N_res, N_res, c_z]`."""
    preprocess_1d = Linear(c.msa_channel, name="preprocess_1d")(batch["target_feat"])
    preprocess_msa = Linear(c.msa_channel, name="preprocess_msa")(batch["msa_feat"])
    msa = preprocess_1d[None] + preprocess_msa
    left_single = Linear(c.pair_channel, name="left_single")(batch["target_feat"])
    right_single = Linear(c.pair_channel, name="right_single")(batch["target_feat"])
    return msa, left_single[:, None] + right_single[None]


def recycling_embedding(batch: dict, c, msa: jax.Array, pair: jax.Array, kernels: str = "xla"):
    """Adds the previous iteration's outputs: binned pseudo-beta distances of `prev_pos` `[N_res, 37, 3]`,
    the normalised `prev_msa_first_row` `[N_res, c_m]` and `prev_pair` `[N_res, N_res, c_z]`."""
    if c.recycle_pos:
        prev_pseudo_beta = all_atom.pseudo_beta_fn(batch["aatype"], batch["prev_pos"], None)
        dgram = dgram_from_positions(prev_pseudo_beta, **c.prev_pos)
        pair = pair + Linear(c.pair_channel, name="prev_pos_linear")(dgram)
    if c.recycle_features:
        first_row = LayerNorm(kernels, name="prev_msa_first_row_norm")(batch["prev_msa_first_row"])
        msa = msa.at[0].add(first_row)
        pair = pair + LayerNorm(kernels, name="prev_pair_norm")(batch["prev_pair"])
    return msa, pair


def relative_position_encoding(residue_index: jax.Array, c) -> jax.Array:
    """One-hot clipped residue-index offsets `[N_res, N_res, 2*max_rel+1]` -> `[N_res, N_res, c_z]`."""
    max_rel = c.max_relative_feature
    offset = residue_index[:, None] - residue_index[None, :]
    rel_pos = jax.nn.one_hot(jnp.clip(offset + max_rel, 0, 2 * max_rel), 2 * max_rel + 1)
    return Linear(c.pair_channel, name="pair_activiations")(rel_pos)  # sic: the official parameter name


def extra_msa_embedding(batch: dict, c) -> jax.Array:
    """extra_msa `[N_extra, N_res]` (ids), has_deletion, deletion_value -> `[N_extra, N_res, c_e]`."""
    features = jnp.concatenate([
        jax.nn.one_hot(batch["extra_msa"], 23),
        batch["extra_has_deletion"][..., None],
        batch["extra_deletion_value"][..., None]], axis=-1)
    return Linear(c.extra_msa_channel, name="extra_msa_activations")(features)


def template_single_embedding(batch: dict, c, zero_init: bool) -> tuple[jax.Array, jax.Array]:
    """Template torsion angles as extra MSA rows.

    template_aatype `[N_templ, N_res]`, template_all_atom_positions `[N_templ, N_res, 37, 3]`,
    template_all_atom_masks `[N_templ, N_res, 37]` -> rows `[N_templ, N_res, c_m]` and their mask
    `[N_templ, N_res]` (the psi-angle mask: it needs only one residue's backbone).
    """
    num_templ, num_res = batch["template_aatype"].shape
    aatype_one_hot = jax.nn.one_hot(batch["template_aatype"], 22)
    torsions = all_atom.atom37_to_torsion_angles(
        aatype=batch["template_aatype"], all_atom_pos=batch["template_all_atom_positions"],
        all_atom_mask=batch["template_all_atom_masks"], placeholder_for_undefined=not zero_init)
    features = jnp.concatenate([
        aatype_one_hot,
        torsions["torsion_angles_sin_cos"].reshape(num_templ, num_res, 14),
        torsions["alt_torsion_angles_sin_cos"].reshape(num_templ, num_res, 14),
        torsions["torsion_angles_mask"]], axis=-1)
    act = Linear(c.msa_channel, initializer="relu", name="template_single_embedding")(features)
    act = Linear(c.msa_channel, initializer="relu", name="template_projection")(jax.nn.relu(act))
    return act, torsions["torsion_angles_mask"][:, :, 2]
