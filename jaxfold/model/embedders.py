"""Input embedders of the AlphaFold trunk (Jumper et al. 2021, Suppl. Algs. 3, 4, 32, and 2 lines 14-16).

Each function creates its layers in the *calling* module's scope (call it from inside a compact method),
because the official parameter files keep them directly under `evoformer/` (`preprocess_1d`,
`prev_pos_linear`, `pair_activiations` [sic], `extra_msa_activations`, `template_single_embedding`, ...).

The initial MSA and pair come from `msa_embedding` and `pair_embedding`. `pair_embedding` builds the whole
initial pair (input embedding + recycled positions and pair + relative positions) `chunk_size` rows at a
time straight into one array of the activation dtype, so for long chains (a `[10k, 10k, 128]` pair is
25.6 GB in bfloat16) no float32 `[N, N, c]` array exists. `input_embedding`, `recycling_embedding` and
`relative_position_encoding` are the same embeddings as separate whole-array steps.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import lax

from jaxfold.common import all_atom
from jaxfold.model.chunking import chunked, keep_done, output_buffer, over_slices
from jaxfold.model.distogram import dgram_from_positions
from jaxfold.model.primitives import LayerNorm, Linear, apply_linear, layer_norm


def input_embedding(batch: dict, c) -> tuple[jax.Array, jax.Array]:
    """target_feat `[N_res, 22]`, msa_feat `[N_seq, N_res, 49]` -> msa `[N_seq, N_res, c_m]`,
    pair `[N_res, N_res, c_z]`."""
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
    rel_pos = relative_position_one_hot(residue_index, residue_index, c.max_relative_feature)
    return Linear(c.pair_channel, name="pair_activiations")(rel_pos)  # sic: the official parameter name


def msa_embedding(
    batch: dict, c, kernels: str = "xla", dtype=jnp.float32, chunk_size: int | str | None = 0, after=None
) -> jax.Array:
    """target_feat `[N_res, 22]`, msa_feat `[N_seq, N_res, 49]` (+ the normalised `prev_msa_first_row`
    `[N_res, c_m]` added to row 0 when `c.recycle_features`) -> msa `[N_seq, N_res, c_m]` in `dtype`, summed
    in float32. The MSA half of `input_embedding` + `recycling_embedding`, for use alongside `pair_embedding`.

    chunk_size: an int > 0 embeds `chunk_size` MSA rows at a time into the result, so no float32
    `[N_seq, N_res, c_m]` array exists beside the (bfloat16) result; 0, None or "auto" embeds all at once.
    after: with a chunk size, arrays the result's buffer is made from (`chunking.chunked`): the trunk passes
    the pair after the extra-MSA stack, so the buffer cannot live through that stack.
    """
    preprocess_1d = Linear(c.msa_channel, name="preprocess_1d")(batch["target_feat"])
    msa_feat = batch["msa_feat"]
    weights, bias = Linear(c.msa_channel, num_input=msa_feat.shape[-1], name="preprocess_msa")()
    first_row = None
    if c.recycle_features:
        first_row = LayerNorm(kernels, name="prev_msa_first_row_norm")(batch["prev_msa_first_row"])

    def rows(feat_rows, row_index):
        """MSA rows `[R, N_res, 49]` with their indices `[R]` -> embedded rows `[R, N_res, c_m]` in `dtype`."""
        msa = preprocess_1d[None] + apply_linear(feat_rows, weights, bias)
        if first_row is not None:  # the recycled first row goes to row 0 only (adding 0.0 elsewhere is exact)
            msa = msa + jnp.where(row_index[:, None, None] == 0, first_row[None], 0.0)
        return msa.astype(dtype)

    row_index = jnp.arange(msa_feat.shape[0])
    return chunked(rows, chunk_size, after=after)(msa_feat, row_index)


def pair_embedding(
    batch: dict, c, kernels: str = "xla", dtype=jnp.float32, chunk_size: int | str | None = 0
) -> jax.Array:
    """The initial pair `[N_res, N_res, c_z]` in `dtype`: `left_single[i] + right_single[j]`
    (+ `prev_pos_linear(dgram(prev_pos))` + `prev_pair_norm(prev_pair)` when recycling)
    (+ `pair_activiations(one_hot(relpos))` when `c.max_relative_feature`), summed in that order in float32
    as `input_embedding`, `recycling_embedding` and `relative_position_encoding` do, then cast to `dtype`.

    batch: target_feat `[N_res, 22]`, residue_index `[N_res]`, and when recycling aatype `[N_res]`,
      prev_pos `[N_res, 37, 3]`, prev_pair `[N_res, N_res, c_z]`.
    chunk_size: an int > 0 builds `chunk_size` rows at a time, written into the result in place: the only
      `[N_res, N_res, ...]` array is the result (when `prev_pair` already has `dtype` its rows are read from,
      and overwritten in, the result buffer, so a donated `prev_pair` is reused). 0, None or "auto"
      (unresolved) builds the whole pair at once, exactly as the separate whole-array functions.
    """
    target_feat = batch["target_feat"]
    num_res = target_feat.shape[0]
    left_single = Linear(c.pair_channel, name="left_single")(target_feat)  # [N_res, c_z]
    right_single = Linear(c.pair_channel, name="right_single")(target_feat)  # [N_res, c_z]
    residue_index = batch["residue_index"]
    if residue_index.shape != (num_res,):
        raise ValueError(f"pair_embedding: residue_index of shape {residue_index.shape}, expected ({num_res},)")
    pseudo_beta = None
    if c.recycle_pos:
        pseudo_beta = all_atom.pseudo_beta_fn(batch["aatype"], batch["prev_pos"], None)  # [N_res, 3]
        prev_pos_w, prev_pos_b = Linear(c.pair_channel, num_input=c.prev_pos.num_bins, name="prev_pos_linear")()
    prev_pair = None
    if c.recycle_features:
        prev_pair = batch["prev_pair"]
        if prev_pair.shape != (num_res, num_res, c.pair_channel):
            raise ValueError(
                f"pair_embedding: prev_pair of shape {prev_pair.shape}, expected {(num_res, num_res, c.pair_channel)}"
            )
        prev_pair_norm = LayerNorm(kernels, num_channels=c.pair_channel, name="prev_pair_norm")()
    max_rel = c.max_relative_feature
    if max_rel:
        relpos_w, relpos_b = Linear(c.pair_channel, num_input=2 * max_rel + 1, name="pair_activiations")()

    def pair_rows(left_rows, pseudo_beta_rows, prev_pair_rows, residue_index_rows):
        """Rows R of the pair: left `[R, c_z]`, pseudo-beta `[R, 3]`, prev_pair `[R, N_res, c_z]`, residue
        index `[R]` (None where unused) -> `[R, N_res, c_z]` in `dtype`."""
        pair = left_rows[:, None] + right_single[None]
        if c.recycle_pos:
            dgram = dgram_rows(pseudo_beta_rows, pseudo_beta, **c.prev_pos)
            pair = pair + apply_linear(dgram, prev_pos_w, prev_pos_b)
        if c.recycle_features:
            pair = pair + layer_norm(prev_pair_rows, *prev_pair_norm, kernels=kernels)
        if max_rel:
            pair = pair + apply_linear(
                relative_position_one_hot(residue_index_rows, residue_index, max_rel), relpos_w, relpos_b
            )
        return pair.astype(dtype)

    if not (isinstance(chunk_size, int) and 0 < chunk_size < num_res):
        return pair_rows(left_single, pseudo_beta, prev_pair, residue_index)

    def rows_at(buffer, start, length):
        def take(a):
            return None if a is None else lax.dynamic_slice_in_dim(a, start, length, axis=0)

        # Rows of prev_pair come from the buffer itself when it holds them (same dtype): each block is read
        # before it is overwritten and depends on no other block, so updating in place is exact.
        prev_rows = take(buffer if prev_pair is not None and prev_pair.dtype == dtype else prev_pair)
        return pair_rows(take(left_single), take(pseudo_beta), prev_rows, take(residue_index))

    if prev_pair is not None and prev_pair.dtype == dtype:
        buffer = prev_pair
    else:
        buffer = output_buffer((num_res, num_res, c.pair_channel), dtype, after=left_single)
    return fill_rows(rows_at, buffer, chunk_size)


def fill_rows(rows_at: Callable, buffer: jax.Array, chunk_size: int) -> jax.Array:
    """Overwrite `buffer [N, ...]` block by block: rows `[s, s + n)` become `rows_at(buffer, s, n)`.

    The buffer is the carry of `chunking.over_slices`, so XLA writes it in its own memory: unlike
    `chunked`, which writes into a fresh output, the new rows replace the ones they are computed from
    (the recycled pair becomes the pair embedding without a second full-size array).
    """

    def one(buffer, start, done):
        rows = rows_at(buffer, start, chunk_size).astype(buffer.dtype)
        # The rows of an overlapping last slice already written (`done`) are kept: computed again from
        # themselves they would be wrong where the buffer is also the input (the recycled pair).
        old = lax.dynamic_slice_in_dim(buffer, start, chunk_size, axis=0)
        return lax.dynamic_update_slice_in_dim(buffer, keep_done(old, rows, done, 0), start, axis=0)

    return over_slices(one, buffer, buffer.shape[0], chunk_size)


def dgram_rows(
    row_positions: jax.Array, positions: jax.Array, num_bins: int, min_bin: float, max_bin: float
) -> jax.Array:
    """`dgram_from_positions` for some rows: row_positions `[R, 3]`, positions `[N, 3]` -> one-hot
    `[R, N, num_bins]` of the squared distances, the same arithmetic element by element."""
    lower = jnp.square(jnp.linspace(min_bin, max_bin, num_bins))
    upper = jnp.concatenate([lower[1:], jnp.array([1e8], dtype=jnp.float32)], axis=-1)
    dist2 = jnp.sum(jnp.square(row_positions[:, None, :] - positions[None, :, :]), axis=-1, keepdims=True)
    return (dist2 > lower).astype(jnp.float32) * (dist2 < upper).astype(jnp.float32)


def relative_position_one_hot(row_residue_index: jax.Array, residue_index: jax.Array, max_rel: int) -> jax.Array:
    """Clipped residue-index offsets of rows `[R]` against all residues `[N]` -> one-hot `[R, N, 2*max_rel+1]`."""
    offset = row_residue_index[:, None] - residue_index[None, :]
    return jax.nn.one_hot(jnp.clip(offset + max_rel, 0, 2 * max_rel), 2 * max_rel + 1)


def extra_msa_embedding(batch: dict, c, dtype=jnp.float32, chunk_size: int | str | None = 0, after=None) -> jax.Array:
    """extra_msa `[N_extra, N_res]` (ids), has_deletion, deletion_value -> `[N_extra, N_res, c_e]` in `dtype`
    (computed in float32). chunk_size: an int > 0 embeds `chunk_size` rows at a time into the result: no
    float32 one-hot `[N_extra, N_res, 25]` or float32 output of the whole extra MSA (at 10,240 residues and
    5,120 rows, 5 and 12.5 GiB) exists; 0, None or "auto" embeds all rows at once. after: as for
    `msa_embedding` (the trunk passes the pair after the templates)."""
    weights, bias = Linear(c.extra_msa_channel, num_input=25, name="extra_msa_activations")()

    def rows(ids, has_deletion, deletion_value):
        features = jnp.concatenate(
            [jax.nn.one_hot(ids, 23), has_deletion[..., None], deletion_value[..., None]], axis=-1
        )
        return apply_linear(features, weights, bias).astype(dtype)

    features = (batch["extra_msa"], batch["extra_has_deletion"], batch["extra_deletion_value"])
    return chunked(rows, chunk_size, after=after)(*features)


def template_single_embedding(batch: dict, c, zero_init: bool) -> tuple[jax.Array, jax.Array]:
    """Template torsion angles as extra MSA rows.

    template_aatype `[N_templ, N_res]`, template_all_atom_positions `[N_templ, N_res, 37, 3]`,
    template_all_atom_masks `[N_templ, N_res, 37]` -> rows `[N_templ, N_res, c_m]` and their mask
    `[N_templ, N_res]` (the psi-angle mask: it needs only one residue's backbone).
    """
    num_templ, num_res = batch["template_aatype"].shape
    aatype_one_hot = jax.nn.one_hot(batch["template_aatype"], 22)
    torsions = all_atom.atom37_to_torsion_angles(
        aatype=batch["template_aatype"],
        all_atom_pos=batch["template_all_atom_positions"],
        all_atom_mask=batch["template_all_atom_masks"],
        placeholder_for_undefined=not zero_init,
    )
    features = jnp.concatenate(
        [
            aatype_one_hot,
            torsions["torsion_angles_sin_cos"].reshape(num_templ, num_res, 14),
            torsions["alt_torsion_angles_sin_cos"].reshape(num_templ, num_res, 14),
            torsions["torsion_angles_mask"],
        ],
        axis=-1,
    )
    act = Linear(c.msa_channel, initializer="relu", name="template_single_embedding")(features)
    act = Linear(c.msa_channel, initializer="relu", name="template_projection")(jax.nn.relu(act))
    return act, torsions["torsion_angles_mask"][:, :, 2]
