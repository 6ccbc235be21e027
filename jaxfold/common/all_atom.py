"""All-atom representations: atom14 <-> atom37, torsion angles, rigid-group frames.

Two layouts of per-residue heavy atoms are used (see residue_constants):
  * atom37 [N_res, 37, ...]: one slot per atom *name*, shared by all residue types;
    the layout of PDB files and of the model's inputs and outputs.
  * atom14 [N_res, 14, ...]: dense, residue-specific slots; what the structure module
    builds internally because it is 2.6x smaller.

The functions follow AlphaFold v2.3.2's `all_atom.py` semantics and keep its
operation order, so results match DeepMind's to float rounding. Gathers from the
per-restype tables clamp out-of-range aatype indices, as AlphaFold's batched_gather
(`mode='clip'`) does.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxfold.common import residue_constants as rc
from jaxfold.common.geometry import Rigid, Rot3, Vec3

Array = jax.Array


def _restype_gather(table: np.ndarray, aatype: Array) -> Array:
    """table[aatype] for a per-restype table [21, ...] -> [*aatype.shape, ...]."""
    return jnp.take(jnp.asarray(table), aatype, axis=0, mode="clip")


def _gather_atoms(data: Array, index: Array, num_index_dims: int = 1) -> Array:
    """Per-residue gather along the atom axis.

    Args:
      data: [..., N_res, A, *feature].
      index: [..., N_res, *idx] integer atom indices into A; `idx` has
        `num_index_dims` axes.
    Returns:
      [..., N_res, *idx, *feature]: out[..., r, i..., :] = data[..., r, index[..., r, i...], :].
    """
    lead = index.ndim - num_index_dims  # batch axes and the residue axis
    idx_shape = index.shape[lead:]
    feature_shape = data.shape[lead + 1 :]
    flat = index.reshape(index.shape[:lead] + (-1,))
    flat = flat.reshape(flat.shape + (1,) * len(feature_shape))
    out = jnp.take_along_axis(data, flat, axis=lead, mode="clip")
    return out.reshape(data.shape[:lead] + idx_shape + feature_shape)


def _make_chi_atom_indices() -> np.ndarray:
    """int32 [21, 4, 4]: residue_constants.chi_angles_atom_indices plus a UNK row."""
    table = np.zeros([21, 4, 4], dtype=np.int32)
    table[:20] = rc.chi_angles_atom_indices
    return table


_CHI_ATOM_INDICES = _make_chi_atom_indices()
# chi_angles_mask has no UNK row; UNK has no chis.
_CHI_ANGLES_MASK = np.concatenate([np.asarray(rc.chi_angles_mask, np.float32), np.zeros([1, 4], np.float32)])


def get_chi_atom_indices() -> Array:
    """atom37 indices of the 4 atoms of every chi angle: int32 [21, 4, 4].

    Rows follow `restypes` plus UNK; chis a residue lacks are [0, 0, 0, 0].
    """
    return jnp.asarray(_CHI_ATOM_INDICES)


# ---------------------------------------------------------------------------------------
# atom14 <-> atom37.
# ---------------------------------------------------------------------------------------


def make_atom14_masks(aatype: Array) -> dict[str, Array]:
    """Per-residue atom14/atom37 index maps and existence masks for `aatype` [...].

    As AlphaFold's data transform `make_atom14_masks`:
      * 'atom14_atom_exists'      float32 [..., 14]
      * 'residx_atom14_to_atom37' int32   [..., 14] (absent atoms -> 0)
      * 'residx_atom37_to_atom14' int32   [..., 37] (absent atoms -> 0)
      * 'atom37_atom_exists'      float32 [..., 37]
    """
    return {
        "atom14_atom_exists": _restype_gather(rc.restype_atom14_mask, aatype),
        "residx_atom14_to_atom37": _restype_gather(rc.restype_atom14_to_atom37, aatype),
        "residx_atom37_to_atom14": _restype_gather(rc.restype_atom37_to_atom14, aatype),
        "atom37_atom_exists": _restype_gather(rc.STANDARD_ATOM_MASK.astype(np.float32), aatype),
    }


def _mask_atoms(data: Array, mask: Array) -> Array:
    """data [N, A, *f] * mask [N, A], the mask broadcast over the feature axes."""
    mask = mask.reshape(mask.shape + (1,) * (data.ndim - mask.ndim))
    return data * mask.astype(data.dtype)


def atom14_to_atom37(atom14_data: Array, residx_atom37_to_atom14: Array, atom37_atom_exists: Array) -> Array:
    """Scatters atom14 data [N, 14, ...] into the atom37 layout [N, 37, ...].

    Args:
      atom14_data: [N, 14, ...], e.g. positions [N, 14, 3] or a mask [N, 14].
      residx_atom37_to_atom14: int [N, 37] from make_atom14_masks.
      atom37_atom_exists: [N, 37] from make_atom14_masks; slots of atoms the residue
        lacks are zeroed (the gather fills them with slot 0's value).
    """
    gathered = _gather_atoms(atom14_data, residx_atom37_to_atom14)
    return _mask_atoms(gathered, atom37_atom_exists)


def atom37_to_atom14(atom37_data: Array, residx_atom14_to_atom37: Array, atom14_atom_exists: Array) -> Array:
    """Gathers atom37 data [N, 37, ...] into the atom14 layout [N, 14, ...].

    Args:
      atom37_data: [N, 37, ...].
      residx_atom14_to_atom37: int [N, 14] from make_atom14_masks.
      atom14_atom_exists: [N, 14] from make_atom14_masks; empty slots are zeroed.
    """
    gathered = _gather_atoms(atom37_data, residx_atom14_to_atom37)
    return _mask_atoms(gathered, atom14_atom_exists)


# ---------------------------------------------------------------------------------------
# Torsion angles from coordinates.
# ---------------------------------------------------------------------------------------


def _shift_right(x: Array, axis: int) -> Array:
    """x shifted by one along `axis` with a zero first element (the previous residue)."""
    axis = axis % x.ndim
    pad_shape = list(x.shape)
    pad_shape[axis] = 1
    sliced = jax.lax.slice_in_dim(x, 0, x.shape[axis] - 1, axis=axis)
    return jnp.concatenate([jnp.zeros(pad_shape, x.dtype), sliced], axis=axis)


def _backbone_torsion_atoms(pos: Array, mask: Array) -> tuple[Array, Array]:
    """Atoms and masks of pre-omega, phi and psi.

    Args:
      pos: [..., N, 37, 3]; mask: [..., N, 37].
    Returns:
      positions [..., N, 3, 4, 3] and mask [..., N, 3]. psi uses this residue's O
      rather than the next residue's N, so it is off by pi; the caller mirrors it.
    """
    prev_pos = _shift_right(pos, axis=-3)
    prev_mask = _shift_right(mask, axis=-2)
    pre_omega = jnp.concatenate([prev_pos[..., 1:3, :], pos[..., 0:2, :]], axis=-2)
    phi = jnp.concatenate([prev_pos[..., 2:3, :], pos[..., 0:3, :]], axis=-2)
    psi = jnp.concatenate([pos[..., 0:3, :], pos[..., 4:5, :]], axis=-2)
    pre_omega_mask = jnp.prod(prev_mask[..., 1:3], axis=-1) * jnp.prod(mask[..., 0:2], axis=-1)
    phi_mask = prev_mask[..., 2] * jnp.prod(mask[..., 0:3], axis=-1)
    psi_mask = jnp.prod(mask[..., 0:3], axis=-1) * mask[..., 4]
    positions = jnp.stack([pre_omega, phi, psi], axis=-3)
    masks = jnp.stack([pre_omega_mask, phi_mask, psi_mask], axis=-1)
    return positions, masks


def _chi_torsion_atoms(aatype: Array, pos: Array, mask: Array) -> tuple[Array, Array]:
    """Atoms [..., N, 4, 4, 3] and mask [..., N, 4] of chi1..chi4.

    A chi counts only if the residue type has it and all four atoms are present.
    """
    atom_indices = _restype_gather(_CHI_ATOM_INDICES, aatype)  # [..., N, 4, 4]
    chi_pos = _gather_atoms(pos, atom_indices, num_index_dims=2)
    chi_mask = _restype_gather(_CHI_ANGLES_MASK, aatype)
    atoms_present = jnp.prod(_gather_atoms(mask, atom_indices, num_index_dims=2), axis=-1)
    return chi_pos, chi_mask * atoms_present.astype(jnp.float32)


def atom37_to_torsion_angles(
    aatype: Array, all_atom_pos: Array, all_atom_mask: Array, placeholder_for_undefined: bool = False
) -> dict[str, Array]:
    """The 7 torsion angles of each residue, as (sin, cos) pairs.

    Order: [pre_omega, phi, psi, chi1, chi2, chi3, chi4]; pre_omega is the omega of
    the peptide bond to the previous residue. AlphaFold Suppl. Alg. 24 conventions.

    Args:
      aatype: int [..., N] (typically [B, N]); values > 20 are treated as UNK.
      all_atom_pos: [..., N, 37, 3] atom37 coordinates.
      all_atom_mask: [..., N, 37] atom37 mask.
      placeholder_for_undefined: replace undefined angles by (sin, cos) = (1, 0),
        AlphaFold's placeholder, instead of leaving whatever the degenerate geometry
        gave (usually (0, 0)).

    Returns:
      'torsion_angles_sin_cos': [..., N, 7, 2] (sin, cos).
      'alt_torsion_angles_sin_cos': [..., N, 7, 2], the same with the pi-periodic chis
        (ASP chi2, GLU chi3, PHE/TYR chi2) rotated by pi, i.e. the angles of the
        structure with the symmetric atom names swapped.
      'torsion_angles_mask': [..., N, 7] float32, 1 where the angle is defined.
    """
    aatype = jnp.minimum(aatype, rc.unk_restype_index)
    all_atom_mask = all_atom_mask.astype(jnp.float32)

    backbone_pos, backbone_mask = _backbone_torsion_atoms(all_atom_pos, all_atom_mask)
    chi_pos, chi_mask = _chi_torsion_atoms(aatype, all_atom_pos, all_atom_mask)
    torsions_atom_pos = jnp.concatenate([backbone_pos, chi_pos], axis=-3)  # [.., 7, 4, 3]
    torsion_angles_mask = jnp.concatenate([backbone_mask, chi_mask], axis=-1)

    # Frame on the middle bond: atom 2 at the origin, atom 1 on the -x axis, atom 0 in
    # the xy plane. The fourth atom's (y, z) in that frame is (cos, sin) of the dihedral
    # up to its length.
    atoms = [Vec3.from_array(torsions_atom_pos[..., i, :]) for i in range(4)]
    torsion_frames = Rigid.from_3_points(point_on_neg_x_axis=atoms[1], origin=atoms[2], point_on_xy_plane=atoms[0])
    fourth_atom_rel_pos = torsion_frames.inverse().apply(atoms[3])

    sin_cos = jnp.stack([fourth_atom_rel_pos.z, fourth_atom_rel_pos.y], axis=-1)
    sin_cos = sin_cos / jnp.sqrt(jnp.sum(jnp.square(sin_cos), axis=-1, keepdims=True) + 1e-8)
    # psi was measured to O, which sits opposite the next residue's N.
    sin_cos = sin_cos * jnp.asarray([1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0])[:, None]

    chi_is_ambiguous = _restype_gather(np.asarray(rc.chi_pi_periodic, np.float32), aatype)
    mirror = jnp.concatenate([jnp.ones(aatype.shape + (3,), jnp.float32), 1.0 - 2.0 * chi_is_ambiguous], axis=-1)
    alt_sin_cos = sin_cos * mirror[..., None]

    if placeholder_for_undefined:
        # (sin, cos) = (1, 0) is AlphaFold's choice (an angle of +90 degrees).
        placeholder = jnp.stack([jnp.ones(sin_cos.shape[:-1]), jnp.zeros(sin_cos.shape[:-1])], axis=-1)
        m = torsion_angles_mask[..., None]
        sin_cos = sin_cos * m + placeholder * (1 - m)
        alt_sin_cos = alt_sin_cos * m + placeholder * (1 - m)

    return {
        "torsion_angles_sin_cos": sin_cos,
        "alt_torsion_angles_sin_cos": alt_sin_cos,
        "torsion_angles_mask": torsion_angles_mask,
    }


# ---------------------------------------------------------------------------------------
# Frames and atoms from torsion angles.
# ---------------------------------------------------------------------------------------


def _concat_rigids(parts, axis: int) -> Rigid:
    """Concatenates Rigids component-wise along `axis`."""
    return jax.tree_util.tree_map(lambda *xs: jnp.concatenate(xs, axis=axis), *parts)


def torsion_angles_to_frames(aatype: Array, backb_to_global: Rigid, torsion_angles_sin_cos: Array) -> Rigid:
    """Global frames of the 8 rigid groups of every residue.

    AlphaFold Suppl. Alg. 24 lines 2-10 and Alg. 25 (makeRotX). Each group's default
    frame (restype_rigid_group_default_frame) is rotated about its x axis by its
    torsion; chi2..chi4 are chained onto the previous chi frame, the rest hang off the
    backbone frame.

    Args:
      aatype: int [N] (any leading dims work: [..., N]).
      backb_to_global: Rigid [N], backbone frames (CA origin, C on +x, N in xy plane).
      torsion_angles_sin_cos: [N, 7, 2] (sin, cos) of the 7 torsions; need not be unit.

    Returns:
      Rigid [N, 8]: group -> global frames, group order
      [backbone, pre_omega, phi, psi, chi1, chi2, chi3, chi4].
    """
    default_frames = Rigid.from_array4x4(_restype_gather(rc.restype_rigid_group_default_frame, aatype))

    sin_angles = torsion_angles_sin_cos[..., 0]
    cos_angles = torsion_angles_sin_cos[..., 1]
    # The backbone group gets the zero rotation.
    sin_angles = jnp.concatenate([jnp.zeros(aatype.shape + (1,), sin_angles.dtype), sin_angles], axis=-1)
    cos_angles = jnp.concatenate([jnp.ones(aatype.shape + (1,), cos_angles.dtype), cos_angles], axis=-1)
    zeros, ones = jnp.zeros_like(sin_angles), jnp.ones_like(sin_angles)
    rotations_about_x = Rot3(ones, zeros, zeros, zeros, cos_angles, -sin_angles, zeros, sin_angles, cos_angles)

    frames = default_frames.compose_rotation(rotations_about_x)  # group -> parent

    chi1_to_backb = frames[..., 4]
    chi2_to_backb = chi1_to_backb @ frames[..., 5]
    chi3_to_backb = chi2_to_backb @ frames[..., 6]
    chi4_to_backb = chi3_to_backb @ frames[..., 7]
    frames_to_backb = _concat_rigids(
        [frames[..., 0:5], chi2_to_backb[..., None], chi3_to_backb[..., None], chi4_to_backb[..., None]], axis=-1
    )

    return backb_to_global[..., None] @ frames_to_backb


def frames_and_literature_positions_to_atom14_pos(aatype: Array, all_frames_to_global: Rigid) -> Vec3:
    """Places every atom's idealised local position with its rigid group's frame.

    AlphaFold Suppl. Alg. 24 line 11.

    Args:
      aatype: int [N] (or [..., N]).
      all_frames_to_global: Rigid [N, 8] from torsion_angles_to_frames.

    Returns:
      Vec3 [N, 14] atom14 positions; slots the residue lacks are zero.
    """
    group_index = _restype_gather(rc.restype_atom14_to_rigid_group, aatype)  # [N, 14]
    group_mask = jax.nn.one_hot(group_index, num_classes=8)  # [N, 14, 8]
    # Select each atom's frame with a one-hot weighted sum, as AlphaFold does (a
    # gather would give the same numbers for finite frames).
    atom_frames = all_frames_to_global.map(lambda x: jnp.sum(x[..., None, :] * group_mask, axis=-1))  # Rigid [N, 14]
    lit_positions = Vec3.from_array(_restype_gather(rc.restype_atom14_rigid_group_positions, aatype))
    positions = atom_frames.apply(lit_positions)
    mask = _restype_gather(rc.restype_atom14_mask, aatype)
    return positions.map(lambda x: x * mask)


# ---------------------------------------------------------------------------------------
# Ground-truth frames and misc.
# ---------------------------------------------------------------------------------------


def atom37_to_frames(aatype: Array, all_atom_positions: Array, all_atom_mask: Array) -> dict[str, Array]:
    """Ground-truth frames of the 8 rigid groups from atom37 coordinates.

    AlphaFold's all_atom.atom37_to_frames (Suppl. Table 2). Groups 1 and 2 (pre-omega,
    phi) carry no heavy atoms and are never marked as existing.

    Args:
      aatype: int [...]; all_atom_positions: [..., 37, 3]; all_atom_mask: [..., 37].

    Returns:
      'rigidgroups_gt_frames': [..., 8, 12] flat12 frames.
      'rigidgroups_gt_exists': [..., 8] 1 where the group exists and its 3 atoms are
        resolved.
      'rigidgroups_group_exists': [..., 8] 1 where the residue type has the group.
      'rigidgroups_group_is_ambiguous': [..., 8] 1 on the symmetric last chi group.
      'rigidgroups_alt_gt_frames': [..., 8, 12] frames with ambiguous groups rotated
        by pi about x (the frames of the atom-name-swapped structure).
    """
    base_idx = _restype_gather(rc.restype_rigidgroup_base_atom37_idx, aatype)  # [.., 8, 3]
    base_pos = _gather_atoms(all_atom_positions, base_idx, num_index_dims=2)  # [..,8,3,3]
    gt_frames = Rigid.from_3_points(
        point_on_neg_x_axis=Vec3.from_array(base_pos[..., 0, :]),
        origin=Vec3.from_array(base_pos[..., 1, :]),
        point_on_xy_plane=Vec3.from_array(base_pos[..., 2, :]),
    )

    group_exists = _restype_gather(rc.restype_rigidgroup_mask, aatype)
    gt_atoms_exist = _gather_atoms(all_atom_mask.astype(jnp.float32), base_idx, num_index_dims=2)
    gt_exists = jnp.min(gt_atoms_exist, axis=-1) * group_exists

    # The backbone frame was built from (C, CA, N); flip x and z so that C lies on +x
    # and N has y > 0, the layout of the literature positions.
    flip = np.tile(np.eye(3, dtype=np.float32), [8, 1, 1])
    flip[0, 0, 0] = -1
    flip[0, 2, 2] = -1
    gt_frames = gt_frames.compose_rotation(Rot3.from_array(jnp.asarray(flip)))

    is_ambiguous = _restype_gather(rc.restype_rigidgroup_is_ambiguous, aatype)
    ambiguity_rot = Rot3.from_array(_restype_gather(rc.restype_rigidgroup_ambiguity_rot, aatype))
    alt_gt_frames = gt_frames.compose_rotation(ambiguity_rot)

    return {
        "rigidgroups_gt_frames": gt_frames.to_tensor_flat12(),
        "rigidgroups_gt_exists": gt_exists,
        "rigidgroups_group_exists": group_exists,
        "rigidgroups_group_is_ambiguous": is_ambiguous,
        "rigidgroups_alt_gt_frames": alt_gt_frames.to_tensor_flat12(),
    }


def pseudo_beta_fn(
    aatype: Array, all_atom_positions: Array, all_atom_masks: Array | None = None
) -> Array | tuple[Array, Array]:
    """Pseudo-beta atom: CA for glycine, CB otherwise.

    Args:
      aatype: int [...]; all_atom_positions: [..., 37, 3]; all_atom_masks: [..., 37].

    Returns:
      positions [..., 3], and, when masks are given, the float32 mask [...] too.
    """
    is_gly = aatype == rc.restype_order["G"]
    ca_idx, cb_idx = rc.atom_order["CA"], rc.atom_order["CB"]
    pseudo_beta = jnp.where(is_gly[..., None], all_atom_positions[..., ca_idx, :], all_atom_positions[..., cb_idx, :])
    if all_atom_masks is None:
        return pseudo_beta
    pseudo_beta_mask = jnp.where(is_gly, all_atom_masks[..., ca_idx], all_atom_masks[..., cb_idx]).astype(jnp.float32)
    return pseudo_beta, pseudo_beta_mask
