"""Shared helpers of the structure-module reference tests (tolerances from shared/reference/README.md)."""

import numpy as np

from jaxfold.config import model_config

# shared/reference/README.md: IPA, fold iteration, structure module (fp32, rtol 1e-4).
ATOL_SM = 1e-4  # activations, affines, sin/cos, rotations
ATOL_SM_POS = 5e-4  # positions and translations in Angstrom
NUM_VALID = 21  # of 23 residues

CONFIG = model_config("model_1_ptm", structure_module_num_layer=2)
SM = CONFIG.model.heads.structure_module
GC = CONFIG.model.global_config


def get_path(tree, path: str):
    """`'sidechains/frames/rot/xx'` -> the leaf, through dicts and Vec3/Rot3/Rigid attributes."""
    for part in path.split("/"):
        tree = tree[part] if isinstance(tree, dict) else getattr(tree, part)
    return tree


def residue_valid(shape, residue_axis: int) -> np.ndarray:
    """Boolean mask broadcastable to `shape` that is true on the valid residues along `residue_axis`."""
    valid_shape = [1] * len(shape)
    valid_shape[residue_axis] = shape[residue_axis]
    return (np.arange(shape[residue_axis]) < NUM_VALID).reshape(valid_shape)


def atol_for(path: str) -> float:
    """Atom positions and frame translations (Angstrom) get the position tolerance; everything else,
    affines (`traj` included) too, the activation one, as the README's table says."""
    if "atom_pos" in path or "positions" in path or "frames/trans" in path:
        return ATOL_SM_POS
    return ATOL_SM


FOLD_ITERATION_OUTPUTS = (
    [
        "activations/act",
        "activations/affine",
        "outputs/affine",
        "outputs/sc/angles_sin_cos",
        "outputs/sc/unnormalized_angles_sin_cos",
    ]
    + [f"outputs/sc/atom_pos/{c}" for c in "xyz"]
    + [f"outputs/sc/frames/rot/{r}{c}" for r in "xyz" for c in "xyz"]
    + [f"outputs/sc/frames/trans/{c}" for c in "xyz"]
)


def structure_module_outputs():
    return (
        [
            "final_affines",
            "final_atom14_mask",
            "final_atom14_positions",
            "final_atom_mask",
            "final_atom_positions",
            "representations/structure_module",
            "traj",
            "sidechains/angles_sin_cos",
            "sidechains/unnormalized_angles_sin_cos",
        ]
        + [f"sidechains/atom_pos/{c}" for c in "xyz"]
        + [f"sidechains/frames/rot/{r}{c}" for r in "xyz" for c in "xyz"]
        + [f"sidechains/frames/trans/{c}" for c in "xyz"]
    )
