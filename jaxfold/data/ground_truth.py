"""AlphaFold2 training targets ("ground truth" features) from a true structure.

`make_ground_truth(aatype, all_atom_positions, all_atom_mask, resolution)` builds, from
atom37 coordinates, every feature AlphaFold v2.3.2's losses read (`jaxfold.losses`):

| key                               | shape       | as AlphaFold's                                   |
| --------------------------------- | ----------- | ------------------------------------------------ |
| `all_atom_positions`, `all_atom_mask` | `[N,37,3]`, `[N,37]` | input (mask as float32)              |
| `atom14_atom_exists`              | `[N,14]`    | data_transforms.make_atom14_masks                |
| `residx_atom14_to_atom37`, `residx_atom37_to_atom14`, `atom37_atom_exists` | | idem          |
| `atom14_gt_positions`, `atom14_gt_exists` | `[N,14,3]`, `[N,14]` | data_transforms.make_atom14_positions |
| `atom14_alt_gt_positions`, `atom14_alt_gt_exists` | | idem: symmetric atom names swapped  |
| `atom14_atom_is_ambiguous`        | `[N,14]`    | idem                                             |
| `rigidgroups_gt_frames`, `rigidgroups_alt_gt_frames` | `[N,8,12]` | all_atom.atom37_to_frames   |
| `rigidgroups_gt_exists`, `rigidgroups_group_exists`, `rigidgroups_group_is_ambiguous` | `[N,8]` | idem |
| `backbone_affine_tensor` | `[N,7]` | quaternion (w,x,y,z) + translation of the backbone frame (CA origin, C on +x, |
| | | N in the xy plane), as quat_affine.make_transform_from_reference |
| `backbone_affine_mask`            | `[N]`       | N * CA * C present                               |
| `chi_angles_sin_cos`, `chi_angles`, `chi_mask` | `[N,4,2]`, `[N,4]`, `[N,4]` | atom37_to_torsion_angles chis |
| `pseudo_beta`, `pseudo_beta_mask` | `[N,3]`, `[N]` | pseudo_beta_fn (CA for Gly, CB otherwise)     |
| `resolution` | `[]` | float32; 0.0 when unknown (AlphaFold's parsers' convention, which the resolution |
| | | filters of the pLDDT / experimentally-resolved / PAE losses reject) |

Everything is jax.numpy and jit-able; inputs may be numpy.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxfold.common import all_atom
from jaxfold.common import residue_constants as rc
from jaxfold.common.geometry import Rigid

Array = jax.Array

__all__ = ["make_ground_truth", "make_atom14_positions", "make_backbone_affine", "make_chi_angles"]


def make_atom14_positions(aatype: Array, all_atom_positions: Array, all_atom_mask: Array) -> dict[str, Array]:
    """atom14 ground truth and its atom-name-swapped alternative (AlphaFold's make_atom14_positions)."""
    aatype = jnp.asarray(aatype, jnp.int32)
    pos = jnp.asarray(all_atom_positions, jnp.float32)
    mask = jnp.asarray(all_atom_mask, jnp.float32)
    masks = all_atom.make_atom14_masks(aatype)
    exists = masks["atom14_atom_exists"]
    gt_exists = exists * all_atom.atom37_to_atom14(mask, masks["residx_atom14_to_atom37"], exists)
    gt_positions = gt_exists[..., None] * all_atom.atom37_to_atom14(pos, masks["residx_atom14_to_atom37"], exists)

    renaming = jnp.take(jnp.asarray(rc.restype_atom14_renaming_matrices), aatype, axis=0, mode="clip")
    alt_positions = jnp.einsum("rac,rab->rbc", gt_positions, renaming)
    alt_exists = jnp.einsum("ra,rab->rb", gt_exists, renaming)
    is_ambiguous = jnp.take(jnp.asarray(rc.restype_atom14_is_ambiguous), aatype, axis=0, mode="clip")
    return dict(
        masks,
        atom14_gt_positions=gt_positions,
        atom14_gt_exists=gt_exists,
        atom14_alt_gt_positions=alt_positions,
        atom14_alt_gt_exists=alt_exists,
        atom14_atom_is_ambiguous=is_ambiguous,
    )


def make_backbone_affine(rigidgroups_gt_frames: Array, all_atom_mask: Array) -> dict[str, Array]:
    """Backbone frames as AlphaFold's QuatAffine tensor [N, 7] (quaternion, translation) and mask [N].

    The backbone frame is rigid group 0 of atom37_to_frames: CA at the origin, C on +x, N in the
    xy plane (y > 0), i.e. quat_affine.make_transform_from_reference(N, CA, C).
    """
    frames = Rigid.from_tensor_flat12(rigidgroups_gt_frames[..., 0, :])
    quaternion = frames.rot.to_quaternion()
    # Fix the (arbitrary) sign: w >= 0.
    quaternion = quaternion * jnp.where(quaternion[..., :1] < 0, -1.0, 1.0)
    tensor = jnp.concatenate([quaternion, frames.trans.to_array()], axis=-1)
    n, ca, c = rc.atom_order["N"], rc.atom_order["CA"], rc.atom_order["C"]
    mask = all_atom_mask[..., n] * all_atom_mask[..., ca] * all_atom_mask[..., c]
    return {"backbone_affine_tensor": tensor, "backbone_affine_mask": mask}


def make_chi_angles(aatype: Array, all_atom_positions: Array, all_atom_mask: Array) -> dict[str, Array]:
    """chi1..chi4 as (sin, cos) [N, 4, 2], radians [N, 4] and mask [N, 4]."""
    torsions = all_atom.atom37_to_torsion_angles(aatype, all_atom_positions, all_atom_mask)
    sin_cos = torsions["torsion_angles_sin_cos"][..., 3:, :]
    chi_mask = torsions["torsion_angles_mask"][..., 3:]
    sin_cos = sin_cos * chi_mask[..., None]
    return {
        "chi_angles_sin_cos": sin_cos,
        "chi_angles": jnp.arctan2(sin_cos[..., 0], sin_cos[..., 1]) * chi_mask,
        "chi_mask": chi_mask,
    }


def make_ground_truth(aatype, all_atom_positions, all_atom_mask, resolution: float | None = None) -> dict[str, Array]:
    """All of AlphaFold's loss targets for one chain; see the module docstring for the keys.

    Args:
      aatype: int [N] (AlphaFold order, 20 = UNK).
      all_atom_positions: [N, 37, 3] Angstrom.
      all_atom_mask: [N, 37] 1 where the atom was resolved.
      resolution: Angstrom; None -> 0.0 ("unknown").
    """
    out = _make_ground_truth(
        jnp.asarray(aatype, jnp.int32),
        jnp.asarray(all_atom_positions, jnp.float32),
        jnp.asarray(all_atom_mask, jnp.float32),
    )
    out["resolution"] = jnp.asarray(0.0 if resolution is None else resolution, jnp.float32)
    return out


@jax.jit
def _make_ground_truth(aatype: Array, pos: Array, mask: Array) -> dict[str, Array]:
    # One compiled program: op-by-op dispatch of the ~hundreds of small ops is ~10x slower.
    out = {"all_atom_positions": pos, "all_atom_mask": mask}
    out.update(make_atom14_positions(aatype, pos, mask))
    out.update(all_atom.atom37_to_frames(aatype, pos, mask))
    out.update(make_backbone_affine(out["rigidgroups_gt_frames"], mask))
    out.update(make_chi_angles(aatype, pos, mask))
    pseudo_beta, pseudo_beta_mask = all_atom.pseudo_beta_fn(aatype, pos, mask)
    out["pseudo_beta"] = pseudo_beta
    out["pseudo_beta_mask"] = pseudo_beta_mask
    return out
