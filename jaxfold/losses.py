"""AlphaFold2 (v2.3.2 monomer) training losses, with DeepMind's semantics, epsilons and weights.

Every function works on one example (no batch axis; vmap for batches), is jit-able and
differentiable (no Python control flow on traced values). `batch` is the model's features merged
with the ground truth of `jaxfold.data.ground_truth.make_ground_truth`; `outputs` is the nested dict
returned by `AlphaFoldIteration` / `AlphaFold`.

Structure module (`folding.py` / `all_atom.py`):
  * `frame_aligned_point_error` (Suppl. Alg. 28), `backbone_loss` (clamped / unclamped mix with
    `batch['use_clamped_fape']`), `compute_renamed_ground_truth` (+ `find_optimal_renaming`),
    `sidechain_loss`, `supervised_chi_loss` (with the angle-norm term),
    `between_residue_bond_loss`, `between_residue_clash_loss`, `within_residue_violations`,
    `find_structural_violations`, `structural_violation_loss`, `structure_module_loss`.
Heads (`modules.py`): `distogram_loss`, `masked_msa_loss`, `predicted_lddt_loss`,
  `experimentally_resolved_loss`, `predicted_aligned_error_loss`.
`total_loss(outputs, batch, config) -> (loss, terms)`: sum of head weight * head loss.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold import metrics
from jaxfold.common import residue_constants as rc
from jaxfold.common.geometry import Rigid, Rot3, Vec3

Array = jax.Array

__all__ = [
    "softmax_cross_entropy",
    "sigmoid_cross_entropy",
    "mask_mean",
    "rigid_from_affine_tensor",
    "frame_aligned_point_error",
    "backbone_loss",
    "find_optimal_renaming",
    "compute_renamed_ground_truth",
    "sidechain_loss",
    "supervised_chi_loss",
    "between_residue_bond_loss",
    "between_residue_clash_loss",
    "within_residue_violations",
    "find_structural_violations",
    "structural_violation_loss",
    "structure_module_loss",
    "distogram_loss",
    "masked_msa_loss",
    "predicted_lddt_loss",
    "experimentally_resolved_loss",
    "predicted_aligned_error_loss",
    "resolution_filter",
    "total_loss",
]


# ---------------------------------------------------------------------------------------------------------
# Utilities (AlphaFold's utils / modules helpers).
# ---------------------------------------------------------------------------------------------------------


def softmax_cross_entropy(logits: Array, labels: Array) -> Array:
    return -jnp.sum(labels * jax.nn.log_softmax(logits), axis=-1)


def sigmoid_cross_entropy(logits: Array, labels: Array) -> Array:
    return -labels * jax.nn.log_sigmoid(logits) - (1.0 - labels) * jax.nn.log_sigmoid(-logits)


def mask_mean(mask: Array, value: Array, axis=None, eps: float = 1e-10) -> Array:
    """AlphaFold's utils.mask_mean: mask axes of size 1 broadcast (and count) over value's."""
    mask = jnp.asarray(mask, value.dtype)
    if axis is None:
        axis = tuple(range(mask.ndim))
    elif isinstance(axis, int):
        axis = (axis,)
    broadcast_factor = 1.0
    for a in axis:
        if mask.shape[a] == 1:
            broadcast_factor *= value.shape[a]
        elif mask.shape[a] != value.shape[a]:
            raise ValueError(f"mask {mask.shape} does not match value {value.shape}")
    return jnp.sum(mask * value, axis=axis) / (jnp.sum(mask, axis=axis) * broadcast_factor + eps)


def _sq_diff(a: Array, b: Array) -> Array:
    return jnp.square(a - b)


def rigid_from_affine_tensor(tensor: Array) -> Rigid:
    """QuatAffine tensor [..., 7] (quaternion, translation) -> Rigid (quaternion normalised, as
    QuatAffine.from_tensor + r3.rigids_from_quataffine).

    An all-zero quaternion (a residue that is padding, e.g. a crop longer than the chain: the
    feature pipeline pads with zeros) becomes the identity: normalising it gives NaN, and a NaN
    frame poisons the masked FAPE sum (NaN * 0 = NaN), so the whole loss and gradient go NaN.
    Such frames are masked out of every loss, so the identity never contributes."""
    quaternion = tensor[..., :4]
    is_zero = jnp.all(quaternion == 0, axis=-1, keepdims=True)
    quaternion = jnp.where(is_zero, jnp.asarray([1.0, 0.0, 0.0, 0.0], quaternion.dtype), quaternion)
    return Rigid(Rot3.from_quaternion(quaternion, normalize=True), Vec3.from_array(tensor[..., 4:]))


def _heads_config(config: Any):
    for attr in ("model", "heads"):
        try:
            if attr in config:
                config = config[attr]
        except TypeError:
            pass
    return config


def resolution_filter(resolution: Array, cfg) -> Array:
    """1.0 if min_resolution <= resolution <= max_resolution (and the head filters), else 0.0."""
    if not cfg.filter_by_resolution:
        return jnp.asarray(1.0, jnp.float32)
    resolution = jnp.asarray(resolution, jnp.float32)
    return ((resolution >= cfg.min_resolution) & (resolution <= cfg.max_resolution)).astype(jnp.float32)


# ---------------------------------------------------------------------------------------------------------
# FAPE.
# ---------------------------------------------------------------------------------------------------------


def frame_aligned_point_error(
    pred_frames: Rigid,
    target_frames: Rigid,
    frames_mask: Array,
    pred_positions: Vec3,
    target_positions: Vec3,
    positions_mask: Array,
    length_scale: float,
    l1_clamp_distance: float | None = None,
    epsilon: float = 1e-4,
) -> Array:
    """Frame aligned point error (Suppl. Alg. 28), AlphaFold's all_atom.frame_aligned_point_error.

    Args:
      pred_frames, target_frames: Rigid [F]; frames_mask [F].
      pred_positions, target_positions: Vec3 [P]; positions_mask [P].
      length_scale: divides the distances (10 A).
      l1_clamp_distance: clamp of the per-pair error (None: unclamped).
      epsilon: inside the sqrt and in the normaliser; the FAPE of identical structures is
        sqrt(epsilon) / length_scale, not exactly 0.
    Returns:
      scalar: sum_ij clamp(|T_i^-1 x_j - T'_i^-1 x'_j|) / length_scale over masked pairs, divided by
      (epsilon + #frames * #positions).
    """
    local_pred = pred_frames.inverse().map(lambda r: r[:, None]).apply(pred_positions.map(lambda x: x[None, :]))
    local_target = target_frames.inverse().map(lambda r: r[:, None]).apply(target_positions.map(lambda x: x[None, :]))
    error_dist = jnp.sqrt(local_pred.squared_distance(local_target) + epsilon)
    if l1_clamp_distance is not None:
        error_dist = jnp.clip(error_dist, 0, l1_clamp_distance)
    normed_error = error_dist / length_scale
    normed_error = normed_error * frames_mask[:, None] * positions_mask[None, :]
    normalization_factor = jnp.sum(frames_mask, axis=-1) * jnp.sum(positions_mask, axis=-1)
    return jnp.sum(normed_error, axis=(-2, -1)) / (epsilon + normalization_factor)


def backbone_loss(batch: Mapping[str, Array], traj: Array, config) -> dict[str, Array]:
    """Backbone FAPE over every structure-module layer (AlphaFold's folding.backbone_loss).

    traj: [L, N, 7] quaternion + translation (Angstrom). With `batch['use_clamped_fape']` (a scalar,
    1 with probability 0.9 in training) the clamped and unclamped FAPE are mixed by it.
    Returns {'fape': final layer's FAPE, 'loss': mean over layers, 'fape_per_layer': [L]}.
    """
    pred = rigid_from_affine_tensor(traj)
    gt = rigid_from_affine_tensor(batch["backbone_affine_tensor"])
    mask = jnp.asarray(batch["backbone_affine_mask"], jnp.float32)

    def fape(clamp):
        fn = lambda p: frame_aligned_point_error(
            p, gt, mask, p.trans, gt.trans, mask, length_scale=config.fape.loss_unit_distance, l1_clamp_distance=clamp
        )
        return jax.vmap(fn)(pred)

    fape_loss = fape(config.fape.clamp_distance)
    if "use_clamped_fape" in batch:
        use_clamped = jnp.asarray(batch["use_clamped_fape"], jnp.float32)
        fape_loss = fape_loss * use_clamped + fape(None) * (1.0 - use_clamped)
    return {"fape": fape_loss[-1], "loss": jnp.mean(fape_loss), "fape_per_layer": fape_loss}


# ---------------------------------------------------------------------------------------------------------
# Side chains.
# ---------------------------------------------------------------------------------------------------------


def _pairwise_dists(x: Array, y: Array) -> Array:
    """[N, 14, 3] -> [N, N, 14, 14] distances between atoms of residue pairs (sqrt(1e-10 + d^2))."""
    return jnp.sqrt(1e-10 + jnp.sum(_sq_diff(x[:, None, :, None, :], y[None, :, None, :, :]), axis=-1))


def find_optimal_renaming(
    atom14_gt_positions,
    atom14_alt_gt_positions,
    atom14_atom_is_ambiguous,
    atom14_gt_exists,
    atom14_pred_positions,
    atom14_atom_exists=None,
) -> Array:
    """[N] float: 1 where swapping the symmetric atom names of the ground truth matches the
    prediction better (distances of ambiguous atoms to all non-ambiguous atoms; Suppl. Alg. 26)."""
    del atom14_atom_exists  # unused, as in AlphaFold
    pred_dists = _pairwise_dists(atom14_pred_positions, atom14_pred_positions)
    gt_dists = _pairwise_dists(atom14_gt_positions, atom14_gt_positions)
    alt_gt_dists = _pairwise_dists(atom14_alt_gt_positions, atom14_alt_gt_positions)
    lddt = jnp.sqrt(1e-10 + _sq_diff(pred_dists, gt_dists))
    alt_lddt = jnp.sqrt(1e-10 + _sq_diff(pred_dists, alt_gt_dists))
    mask = (
        atom14_gt_exists[:, None, :, None]
        * atom14_atom_is_ambiguous[:, None, :, None]
        * atom14_gt_exists[None, :, None, :]
        * (1.0 - atom14_atom_is_ambiguous[None, :, None, :])
    )
    per_res_lddt = jnp.sum(mask * lddt, axis=(1, 2, 3))
    alt_per_res_lddt = jnp.sum(mask * alt_lddt, axis=(1, 2, 3))
    return (alt_per_res_lddt < per_res_lddt).astype(jnp.float32)


def compute_renamed_ground_truth(batch: Mapping[str, Array], atom14_pred_positions: Array) -> dict[str, Array]:
    """AlphaFold's folding.compute_renamed_ground_truth: per residue, the naming of the ground
    truth's symmetric atoms closer to the prediction."""
    alt = find_optimal_renaming(
        batch["atom14_gt_positions"],
        batch["atom14_alt_gt_positions"],
        batch["atom14_atom_is_ambiguous"],
        batch["atom14_gt_exists"],
        atom14_pred_positions,
        batch["atom14_atom_exists"],
    )
    positions = (1.0 - alt[:, None, None]) * batch["atom14_gt_positions"] + alt[:, None, None] * batch[
        "atom14_alt_gt_positions"
    ]
    mask = (1.0 - alt[:, None]) * batch["atom14_gt_exists"] + alt[:, None] * batch["atom14_alt_gt_exists"]
    return {"alt_naming_is_better": alt, "renamed_atom14_gt_positions": positions, "renamed_atom14_gt_exists": mask}


def sidechain_loss(
    batch: Mapping[str, Array], sidechains: Mapping[str, Any], renamed: Mapping[str, Array], config
) -> dict[str, Array]:
    """All-atom FAPE of the final layer's 8 group frames x 14 atoms (AlphaFold's folding.sidechain_loss).

    sidechains: `frames` Rigid [L, N, 8] (or [N, 8]), `atom_pos` Vec3 [L, N, 14] (or [N, 14]).
    renamed: output of compute_renamed_ground_truth.
    """
    alt = renamed["alt_naming_is_better"]
    gt_frames = (1.0 - alt[:, None, None]) * batch["rigidgroups_gt_frames"] + alt[:, None, None] * batch[
        "rigidgroups_alt_gt_frames"
    ]
    flat_gt_frames = Rigid.from_tensor_flat12(jnp.reshape(gt_frames, [-1, 12]))
    flat_frames_mask = jnp.reshape(batch["rigidgroups_gt_exists"], [-1]).astype(jnp.float32)
    flat_gt_positions = Vec3.from_array(jnp.reshape(renamed["renamed_atom14_gt_positions"], [-1, 3]))
    flat_positions_mask = jnp.reshape(renamed["renamed_atom14_gt_exists"], [-1])

    frames, atom_pos = sidechains["frames"], sidechains["atom_pos"]
    last = (
        (lambda x: jnp.reshape(x[-1], [-1]))
        if frames.shape and len(frames.shape) == 3
        else (lambda x: jnp.reshape(x, [-1]))
    )
    flat_pred_frames = frames.map(last)
    flat_pred_positions = atom_pos.map(last)
    fape = frame_aligned_point_error(
        flat_pred_frames,
        flat_gt_frames,
        flat_frames_mask,
        flat_pred_positions,
        flat_gt_positions,
        flat_positions_mask,
        length_scale=config.sidechain.length_scale,
        l1_clamp_distance=config.sidechain.atom_clamp_distance,
    )
    return {"fape": fape, "loss": fape}


def _true_chi_sin_cos(batch) -> Array:
    if "chi_angles_sin_cos" in batch:
        return jnp.asarray(batch["chi_angles_sin_cos"], jnp.float32)
    chi = jnp.asarray(batch["chi_angles"], jnp.float32)
    return jnp.stack([jnp.sin(chi), jnp.cos(chi)], axis=-1)


def supervised_chi_loss(batch: Mapping[str, Array], sidechains: Mapping[str, Array], config) -> dict[str, Array]:
    """Chi-angle loss over all layers with the pi-periodic alternative, plus the angle-norm loss
    (Suppl. Alg. 27; AlphaFold's folding.supervised_chi_loss).

    Returns {'chi_loss', 'angle_norm_loss', 'loss' = chi_weight * chi + angle_norm_weight * norm}.
    """
    eps = 1e-6
    sequence_mask = jnp.asarray(batch["seq_mask"], jnp.float32)
    num_res = sequence_mask.shape[0]
    chi_mask = jnp.asarray(batch["chi_mask"], jnp.float32)
    pred_angles = jnp.reshape(sidechains["angles_sin_cos"], [-1, num_res, 7, 2])[:, :, 3:]
    one_hot = jax.nn.one_hot(batch["aatype"], rc.restype_num + 1, dtype=jnp.float32)[None]
    chi_pi_periodic = jnp.einsum("ijk,kl->ijl", one_hot, jnp.asarray(rc.chi_pi_periodic, jnp.float32))
    sin_cos_true = _true_chi_sin_cos(batch)[None]
    sin_cos_true_shifted = (1 - 2 * chi_pi_periodic)[..., None] * sin_cos_true
    sq_chi_error = jnp.sum(_sq_diff(sin_cos_true, pred_angles), -1)
    sq_chi_error_shifted = jnp.sum(_sq_diff(sin_cos_true_shifted, pred_angles), -1)
    sq_chi_error = jnp.minimum(sq_chi_error, sq_chi_error_shifted)
    chi_loss = mask_mean(chi_mask[None], sq_chi_error)

    unnormed = jnp.reshape(sidechains["unnormalized_angles_sin_cos"], [-1, num_res, 7, 2])
    angle_norm = jnp.sqrt(jnp.sum(jnp.square(unnormed), axis=-1) + eps)
    norm_error = jnp.abs(angle_norm - 1.0)
    angle_norm_loss = mask_mean(sequence_mask[None, :, None], norm_error)
    loss = config.chi_weight * chi_loss + config.angle_norm_weight * angle_norm_loss
    return {"chi_loss": chi_loss, "angle_norm_loss": angle_norm_loss, "loss": loss}


# ---------------------------------------------------------------------------------------------------------
# Structural violations.
# ---------------------------------------------------------------------------------------------------------


def between_residue_bond_loss(
    pred_atom_positions: Array,
    pred_atom_mask: Array,
    residue_index: Array,
    aatype: Array,
    tolerance_factor_soft: float = 12.0,
    tolerance_factor_hard: float = 12.0,
) -> dict[str, Array]:
    """Flat-bottom losses on the peptide bond C-N and the angles CA-C-N, C-N-CA (Suppl. Sec. 1.9.11).

    pred_atom_positions [N, 14, 3] (atom14: N=0, CA=1, C=2), pred_atom_mask [N, 14].
    As in AlphaFold v2.3.2 the CA-C-N tolerance uses the C-N *bond length* stddev (0.014), a quirk
    of the original kept for equality.
    """
    residue_index = jnp.asarray(residue_index, jnp.float32)
    pred_atom_mask = jnp.asarray(pred_atom_mask, jnp.float32)
    this_ca_pos, this_ca_mask = pred_atom_positions[:-1, 1], pred_atom_mask[:-1, 1]
    this_c_pos, this_c_mask = pred_atom_positions[:-1, 2], pred_atom_mask[:-1, 2]
    next_n_pos, next_n_mask = pred_atom_positions[1:, 0], pred_atom_mask[1:, 0]
    next_ca_pos, next_ca_mask = pred_atom_positions[1:, 1], pred_atom_mask[1:, 1]
    has_no_gap_mask = ((residue_index[1:] - residue_index[:-1]) == 1.0).astype(jnp.float32)

    c_n_bond_length = jnp.sqrt(1e-6 + jnp.sum(_sq_diff(this_c_pos, next_n_pos), axis=-1))
    next_is_proline = (aatype[1:] == rc.resname_to_idx["PRO"]).astype(jnp.float32)
    gt_length = (1.0 - next_is_proline) * rc.between_res_bond_length_c_n[
        0
    ] + next_is_proline * rc.between_res_bond_length_c_n[1]
    gt_stddev = (1.0 - next_is_proline) * rc.between_res_bond_length_stddev_c_n[
        0
    ] + next_is_proline * rc.between_res_bond_length_stddev_c_n[1]
    c_n_bond_length_error = jnp.sqrt(1e-6 + jnp.square(c_n_bond_length - gt_length))
    c_n_loss_per_residue = jax.nn.relu(c_n_bond_length_error - tolerance_factor_soft * gt_stddev)
    mask = this_c_mask * next_n_mask * has_no_gap_mask
    c_n_loss = jnp.sum(mask * c_n_loss_per_residue) / (jnp.sum(mask) + 1e-6)
    c_n_violation_mask = mask * (c_n_bond_length_error > tolerance_factor_hard * gt_stddev)

    ca_c_bond_length = jnp.sqrt(1e-6 + jnp.sum(_sq_diff(this_ca_pos, this_c_pos), axis=-1))
    n_ca_bond_length = jnp.sqrt(1e-6 + jnp.sum(_sq_diff(next_n_pos, next_ca_pos), axis=-1))
    c_ca_unit_vec = (this_ca_pos - this_c_pos) / ca_c_bond_length[:, None]
    c_n_unit_vec = (next_n_pos - this_c_pos) / c_n_bond_length[:, None]
    n_ca_unit_vec = (next_ca_pos - next_n_pos) / n_ca_bond_length[:, None]

    ca_c_n_cos_angle = jnp.sum(c_ca_unit_vec * c_n_unit_vec, axis=-1)
    gt_angle = rc.between_res_cos_angles_ca_c_n[0]
    gt_stddev = rc.between_res_bond_length_stddev_c_n[0]  # sic (AlphaFold v2.3.2)
    ca_c_n_cos_angle_error = jnp.sqrt(1e-6 + jnp.square(ca_c_n_cos_angle - gt_angle))
    ca_c_n_loss_per_residue = jax.nn.relu(ca_c_n_cos_angle_error - tolerance_factor_soft * gt_stddev)
    mask = this_ca_mask * this_c_mask * next_n_mask * has_no_gap_mask
    ca_c_n_loss = jnp.sum(mask * ca_c_n_loss_per_residue) / (jnp.sum(mask) + 1e-6)
    ca_c_n_violation_mask = mask * (ca_c_n_cos_angle_error > tolerance_factor_hard * gt_stddev)

    c_n_ca_cos_angle = jnp.sum((-c_n_unit_vec) * n_ca_unit_vec, axis=-1)
    gt_angle = rc.between_res_cos_angles_c_n_ca[0]
    gt_stddev = rc.between_res_cos_angles_c_n_ca[1]
    c_n_ca_cos_angle_error = jnp.sqrt(1e-6 + jnp.square(c_n_ca_cos_angle - gt_angle))
    c_n_ca_loss_per_residue = jax.nn.relu(c_n_ca_cos_angle_error - tolerance_factor_soft * gt_stddev)
    mask = this_c_mask * next_n_mask * next_ca_mask * has_no_gap_mask
    c_n_ca_loss = jnp.sum(mask * c_n_ca_loss_per_residue) / (jnp.sum(mask) + 1e-6)
    c_n_ca_violation_mask = mask * (c_n_ca_cos_angle_error > tolerance_factor_hard * gt_stddev)

    per_residue_loss_sum = c_n_loss_per_residue + ca_c_n_loss_per_residue + c_n_ca_loss_per_residue
    per_residue_loss_sum = 0.5 * (jnp.pad(per_residue_loss_sum, [[0, 1]]) + jnp.pad(per_residue_loss_sum, [[1, 0]]))
    violation_mask = jnp.max(jnp.stack([c_n_violation_mask, ca_c_n_violation_mask, c_n_ca_violation_mask]), axis=0)
    violation_mask = jnp.maximum(jnp.pad(violation_mask, [[0, 1]]), jnp.pad(violation_mask, [[1, 0]]))
    return {
        "c_n_loss_mean": c_n_loss,
        "ca_c_n_loss_mean": ca_c_n_loss,
        "c_n_ca_loss_mean": c_n_ca_loss,
        "per_residue_loss_sum": per_residue_loss_sum,
        "per_residue_violation_mask": violation_mask,
        # Per peptide bond [N-1], handy for diagnostics.
        "c_n_violation_mask": c_n_violation_mask,
        "ca_c_n_violation_mask": ca_c_n_violation_mask,
        "c_n_ca_violation_mask": c_n_ca_violation_mask,
    }


def between_residue_clash_loss(
    atom14_pred_positions: Array,
    atom14_atom_exists: Array,
    atom14_atom_radius: Array,
    residue_index: Array,
    overlap_tolerance_soft: float = 1.5,
    overlap_tolerance_hard: float = 1.5,
) -> dict[str, Array]:
    """Van der Waals clashes between atoms of different residues (peptide C-N and CYS SG-SG
    excluded), AlphaFold's all_atom.between_residue_clash_loss."""
    atom14_atom_exists = jnp.asarray(atom14_atom_exists, jnp.float32)
    dists = _pairwise_dists(atom14_pred_positions, atom14_pred_positions)
    dists_mask = atom14_atom_exists[:, None, :, None] * atom14_atom_exists[None, :, None, :]
    dists_mask = dists_mask * (residue_index[:, None, None, None] < residue_index[None, :, None, None])
    c_one_hot = jax.nn.one_hot(2, num_classes=14)
    n_one_hot = jax.nn.one_hot(0, num_classes=14)
    neighbour_mask = (residue_index[:, None, None, None] + 1) == residue_index[None, :, None, None]
    c_n_bonds = neighbour_mask * c_one_hot[None, None, :, None] * n_one_hot[None, None, None, :]
    dists_mask = dists_mask * (1.0 - c_n_bonds)
    cys_sg_idx = rc.restype_name_to_atom14_names["CYS"].index("SG")
    cys_sg_one_hot = jax.nn.one_hot(cys_sg_idx, num_classes=14)
    disulfide_bonds = cys_sg_one_hot[None, None, :, None] * cys_sg_one_hot[None, None, None, :]
    dists_mask = dists_mask * (1.0 - disulfide_bonds)
    dists_lower_bound = dists_mask * (atom14_atom_radius[:, None, :, None] + atom14_atom_radius[None, :, None, :])
    dists_to_low_error = dists_mask * jax.nn.relu(dists_lower_bound - overlap_tolerance_soft - dists)
    mean_loss = jnp.sum(dists_to_low_error) / (1e-6 + jnp.sum(dists_mask))
    per_atom_loss_sum = jnp.sum(dists_to_low_error, axis=(0, 2)) + jnp.sum(dists_to_low_error, axis=(1, 3))
    clash_mask = dists_mask * (dists < (dists_lower_bound - overlap_tolerance_hard))
    per_atom_clash_mask = jnp.maximum(jnp.max(clash_mask, axis=(0, 2)), jnp.max(clash_mask, axis=(1, 3)))
    return {"mean_loss": mean_loss, "per_atom_loss_sum": per_atom_loss_sum, "per_atom_clash_mask": per_atom_clash_mask}


def within_residue_violations(
    atom14_pred_positions: Array,
    atom14_atom_exists: Array,
    atom14_dists_lower_bound: Array,
    atom14_dists_upper_bound: Array,
    tighten_bounds_for_loss: float = 0.0,
) -> dict[str, Array]:
    """Bond lengths, bond angles (as 1-3 distances) and clashes within each residue."""
    atom14_atom_exists = jnp.asarray(atom14_atom_exists, jnp.float32)
    dists_masks = (1.0 - jnp.eye(14, 14)[None]) * (atom14_atom_exists[:, :, None] * atom14_atom_exists[:, None, :])
    dists = jnp.sqrt(
        1e-10 + jnp.sum(_sq_diff(atom14_pred_positions[:, :, None, :], atom14_pred_positions[:, None, :, :]), axis=-1)
    )
    dists_to_low_error = jax.nn.relu(atom14_dists_lower_bound + tighten_bounds_for_loss - dists)
    dists_to_high_error = jax.nn.relu(dists - (atom14_dists_upper_bound - tighten_bounds_for_loss))
    loss = dists_masks * (dists_to_low_error + dists_to_high_error)
    per_atom_loss_sum = jnp.sum(loss, axis=1) + jnp.sum(loss, axis=2)
    violations = dists_masks * ((dists < atom14_dists_lower_bound) | (dists > atom14_dists_upper_bound))
    per_atom_violations = jnp.maximum(jnp.max(violations, axis=1), jnp.max(violations, axis=2))
    return {"per_atom_loss_sum": per_atom_loss_sum, "per_atom_violations": per_atom_violations}


_ATOMTYPE_RADIUS = np.array([rc.van_der_waals_radius[name[0]] for name in rc.atom_types], np.float32)


def find_structural_violations(batch: Mapping[str, Array], atom14_pred_positions: Array, config) -> dict[str, Any]:
    """AlphaFold's folding.find_structural_violations; `config` is the structure_module section."""
    aatype = batch["aatype"]
    atom14_atom_exists = jnp.asarray(batch["atom14_atom_exists"], jnp.float32)
    residue_index = jnp.asarray(batch["residue_index"])
    connection = between_residue_bond_loss(
        atom14_pred_positions,
        atom14_atom_exists,
        residue_index.astype(jnp.float32),
        aatype,
        tolerance_factor_soft=config.violation_tolerance_factor,
        tolerance_factor_hard=config.violation_tolerance_factor,
    )
    atom14_atom_radius = atom14_atom_exists * jnp.take(
        jnp.asarray(_ATOMTYPE_RADIUS), batch["residx_atom14_to_atom37"], mode="clip"
    )
    clashes = between_residue_clash_loss(
        atom14_pred_positions,
        atom14_atom_exists,
        atom14_atom_radius,
        residue_index,
        overlap_tolerance_soft=config.clash_overlap_tolerance,
        overlap_tolerance_hard=config.clash_overlap_tolerance,
    )
    bounds = rc.make_atom14_dists_bounds(
        overlap_tolerance=config.clash_overlap_tolerance, bond_length_tolerance_factor=config.violation_tolerance_factor
    )
    lower = jnp.take(jnp.asarray(bounds["lower_bound"]), aatype, axis=0, mode="clip")
    upper = jnp.take(jnp.asarray(bounds["upper_bound"]), aatype, axis=0, mode="clip")
    within = within_residue_violations(atom14_pred_positions, atom14_atom_exists, lower, upper, 0.0)
    per_residue_violations_mask = jnp.max(
        jnp.stack(
            [
                connection["per_residue_violation_mask"],
                jnp.max(clashes["per_atom_clash_mask"], axis=-1),
                jnp.max(within["per_atom_violations"], axis=-1),
            ]
        ),
        axis=0,
    )
    return {
        "between_residues": {
            "bonds_c_n_loss_mean": connection["c_n_loss_mean"],
            "angles_ca_c_n_loss_mean": connection["ca_c_n_loss_mean"],
            "angles_c_n_ca_loss_mean": connection["c_n_ca_loss_mean"],
            "connections_per_residue_loss_sum": connection["per_residue_loss_sum"],
            "connections_per_residue_violation_mask": connection["per_residue_violation_mask"],
            "c_n_violation_mask": connection["c_n_violation_mask"],
            "ca_c_n_violation_mask": connection["ca_c_n_violation_mask"],
            "c_n_ca_violation_mask": connection["c_n_ca_violation_mask"],
            "clashes_mean_loss": clashes["mean_loss"],
            "clashes_per_atom_loss_sum": clashes["per_atom_loss_sum"],
            "clashes_per_atom_clash_mask": clashes["per_atom_clash_mask"],
        },
        "within_residues": {
            "per_atom_loss_sum": within["per_atom_loss_sum"],
            "per_atom_violations": within["per_atom_violations"],
        },
        "total_per_residue_violations_mask": per_residue_violations_mask,
    }


def structural_violation_loss(batch: Mapping[str, Array], violations: Mapping[str, Any]) -> Array:
    """Unweighted violation loss (AlphaFold's folding.structural_violation_loss without the weight)."""
    num_atoms = jnp.sum(batch["atom14_atom_exists"]).astype(jnp.float32)
    br, wr = violations["between_residues"], violations["within_residues"]
    return (
        br["bonds_c_n_loss_mean"]
        + br["angles_ca_c_n_loss_mean"]
        + br["angles_c_n_ca_loss_mean"]
        + jnp.sum(br["clashes_per_atom_loss_sum"] + wr["per_atom_loss_sum"]) / (1e-6 + num_atoms)
    )


def structure_module_loss(structure: Mapping[str, Any], batch: Mapping[str, Array], config) -> dict[str, Any]:
    """AlphaFold's StructureModule.loss. `config`: heads.structure_module; `structure`: the model's
    `structure_module` outputs (`traj`, `sidechains`, `final_atom14_positions`).

    loss = (1 - weight_frac) * mean_layers(backbone FAPE) + weight_frac * sidechain FAPE
           + chi_weight * chi + angle_norm_weight * angle_norm
           + structural_violation_loss_weight * violations.
    """
    final_atom14 = structure["final_atom14_positions"]
    renamed = compute_renamed_ground_truth(batch, final_atom14)
    bb = backbone_loss(batch, structure["traj"], config)
    sc = sidechain_loss(batch, structure["sidechains"], renamed, config)
    loss = (1 - config.sidechain.weight_frac) * bb["loss"] + config.sidechain.weight_frac * sc["loss"]
    chi = supervised_chi_loss(batch, structure["sidechains"], config)
    loss = loss + chi["loss"]
    out = {
        "fape": bb["fape"],
        "backbone_fape": bb["loss"],
        "sidechain_fape": sc["fape"],
        "chi_loss": chi["chi_loss"],
        "angle_norm_loss": chi["angle_norm_loss"],
    }
    if config.structural_violation_loss_weight:
        violations = find_structural_violations(batch, final_atom14, config)
        viol = structural_violation_loss(batch, violations)
        loss = loss + config.structural_violation_loss_weight * viol
        out["violation_loss"] = viol
        out["violations"] = violations
    out["loss"] = loss
    out["renamed"] = renamed
    return out


# ---------------------------------------------------------------------------------------------------------
# Heads.
# ---------------------------------------------------------------------------------------------------------


def distogram_loss(logits: Array, bin_edges: Array, batch: Mapping[str, Array]) -> dict[str, Array]:
    """Cross entropy of pseudo-beta distance bins (AlphaFold's _distogram_log_loss)."""
    positions = batch["pseudo_beta"]
    mask = jnp.asarray(batch["pseudo_beta_mask"], jnp.float32)
    num_bins = logits.shape[-1]
    sq_breaks = jnp.square(bin_edges)
    dist2 = jnp.sum(jnp.square(positions[..., :, None, :] - positions[..., None, :, :]), axis=-1, keepdims=True)
    true_bins = jnp.sum(dist2 > sq_breaks, axis=-1)
    errors = softmax_cross_entropy(logits, jax.nn.one_hot(true_bins, num_bins))
    square_mask = mask[..., None, :] * mask[..., :, None]
    avg_error = jnp.sum(errors * square_mask, axis=(-2, -1)) / (1e-6 + jnp.sum(square_mask, axis=(-2, -1)))
    return {"loss": avg_error, "true_dist": jnp.sqrt(1e-6 + dist2[..., 0])}


def masked_msa_loss(logits: Array, batch: Mapping[str, Array]) -> dict[str, Array]:
    """BERT loss on the masked MSA positions (`true_msa`, `bert_mask`)."""
    errors = softmax_cross_entropy(logits, jax.nn.one_hot(batch["true_msa"], logits.shape[-1]))
    bert_mask = jnp.asarray(batch["bert_mask"], jnp.float32)
    loss = jnp.sum(errors * bert_mask, axis=(-2, -1)) / (1e-8 + jnp.sum(bert_mask, axis=(-2, -1)))
    return {"loss": loss}


def predicted_lddt_loss(
    logits: Array, final_atom_positions: Array, batch: Mapping[str, Array], config
) -> dict[str, Array]:
    """Cross entropy of the binned per-residue lDDT-Ca of the (stop-gradient) final structure."""
    ca = rc.atom_order["CA"]
    pred_ca = jax.lax.stop_gradient(final_atom_positions[:, ca, :])
    true_ca = batch["all_atom_positions"][:, ca, :]
    mask_ca = jnp.asarray(batch["all_atom_mask"][:, ca], jnp.float32)
    lddt_ca = jax.lax.stop_gradient(metrics.lddt(pred_ca, true_ca, mask_ca, cutoff=15.0, per_residue=True))
    num_bins = config.num_bins
    bin_index = jnp.minimum(jnp.floor(lddt_ca * num_bins).astype(jnp.int32), num_bins - 1)
    errors = softmax_cross_entropy(logits, jax.nn.one_hot(bin_index, num_bins))
    loss = jnp.sum(errors * mask_ca) / (jnp.sum(mask_ca) + 1e-8)
    loss = loss * resolution_filter(batch["resolution"], config)
    return {"loss": loss, "lddt_ca": lddt_ca}


def experimentally_resolved_loss(logits: Array, batch: Mapping[str, Array], config) -> dict[str, Array]:
    """Per-atom sigmoid cross entropy of `all_atom_mask` over the atoms the residue type has."""
    atom_exists = jnp.asarray(batch["atom37_atom_exists"], jnp.float32)
    labels = jnp.asarray(batch["all_atom_mask"], jnp.float32)
    xent = sigmoid_cross_entropy(logits, labels)
    loss = jnp.sum(xent * atom_exists) / (1e-8 + jnp.sum(atom_exists))
    loss = loss * resolution_filter(batch["resolution"], config)
    return {"loss": loss}


def predicted_aligned_error_loss(
    logits: Array, breaks: Array, final_affines: Array, batch: Mapping[str, Array], config
) -> dict[str, Array]:
    """Cross entropy of the binned aligned error |T_i^-1 t_j - T_i'^-1 t_j'| (stop-gradient)."""
    pred = rigid_from_affine_tensor(final_affines)
    true = rigid_from_affine_tensor(batch["backbone_affine_tensor"])
    mask = jnp.asarray(batch["backbone_affine_mask"], jnp.float32)
    square_mask = mask[:, None] * mask[None, :]

    def local_points(r: Rigid) -> Vec3:
        # [i, j]: position of residue j's CA in residue i's frame (QuatAffine.invert_point).
        return r.map(lambda x: x[:, None]).apply_inverse(r.trans.map(lambda x: x[None, :]))

    error_dist2 = jax.lax.stop_gradient(local_points(pred).squared_distance(local_points(true)))
    true_bins = jnp.sum((error_dist2[..., None] > jnp.square(breaks)).astype(jnp.int32), axis=-1)
    errors = softmax_cross_entropy(logits, jax.nn.one_hot(true_bins, config.num_bins))
    loss = jnp.sum(errors * square_mask, axis=(-2, -1)) / (1e-8 + jnp.sum(square_mask, axis=(-2, -1)))
    loss = loss * resolution_filter(batch["resolution"], config)
    return {"loss": loss}


# ---------------------------------------------------------------------------------------------------------
# Total.
# ---------------------------------------------------------------------------------------------------------


def total_loss(outputs: Mapping[str, Any], batch: Mapping[str, Array], config) -> tuple[Array, dict[str, Array]]:
    """Weighted sum of the losses of every head present in `outputs` with a nonzero weight,
    as AlphaFoldIteration's loss.

    Args:
      outputs: AlphaFoldIteration / AlphaFold output dict.
      batch: one example's features (no recycling axis; `aatype`, `seq_mask`, `residue_index`,
        `true_msa`, `bert_mask`, `atom14_atom_exists`, `residx_atom14_to_atom37`,
        `atom37_atom_exists`), the ground truth of make_ground_truth, and optionally
        `use_clamped_fape` (scalar).
      config: the full config, `config.model` or `config.model.heads`.
    Returns:
      (loss, terms): terms holds each head's unweighted loss under its config name plus the
      structure-module components (`fape`, `backbone_fape`, `sidechain_fape`, `chi_loss`,
      `angle_norm_loss`, `violation_loss`).
    """
    heads = _heads_config(config)
    terms: dict[str, Array] = {}
    total = jnp.asarray(0.0, jnp.float32)

    sm_cfg = heads.structure_module
    if "structure_module" in outputs and sm_cfg.weight:
        sm = structure_module_loss(outputs["structure_module"], batch, sm_cfg)
        for k in ("fape", "backbone_fape", "sidechain_fape", "chi_loss", "angle_norm_loss", "violation_loss"):
            if k in sm:
                terms[k] = sm[k]
        terms["structure_module"] = sm["loss"]
        total = total + sm_cfg.weight * sm["loss"]

    def add(name, value):
        nonlocal total
        terms[name] = value
        total = total + heads[name].weight * value

    if "distogram" in outputs and heads.distogram.weight:
        add(
            "distogram",
            distogram_loss(outputs["distogram"]["logits"], outputs["distogram"]["bin_edges"], batch)["loss"],
        )
    if "masked_msa" in outputs and heads.masked_msa.weight:
        add("masked_msa", masked_msa_loss(outputs["masked_msa"]["logits"], batch)["loss"])
    if "predicted_lddt" in outputs and heads.predicted_lddt.weight:
        add(
            "predicted_lddt",
            predicted_lddt_loss(
                outputs["predicted_lddt"]["logits"],
                outputs["structure_module"]["final_atom_positions"],
                batch,
                heads.predicted_lddt,
            )["loss"],
        )
    if "experimentally_resolved" in outputs and heads.experimentally_resolved.weight:
        add(
            "experimentally_resolved",
            experimentally_resolved_loss(
                outputs["experimentally_resolved"]["logits"], batch, heads.experimentally_resolved
            )["loss"],
        )
    if "predicted_aligned_error" in outputs and heads.predicted_aligned_error.weight:
        pae = outputs["predicted_aligned_error"]
        add(
            "predicted_aligned_error",
            predicted_aligned_error_loss(
                pae["logits"],
                pae["breaks"],
                outputs["structure_module"]["final_affines"],
                batch,
                heads.predicted_aligned_error,
            )["loss"],
        )
    terms["loss"] = total
    return total, terms
