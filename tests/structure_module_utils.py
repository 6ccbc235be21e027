"""Shared helpers of the structure-module reference tests (tolerances from shared/reference/README.md)."""

import jax
import jax.numpy as jnp
import numpy as np
from reference_utils import assert_close_on, module_reference

from jaxfold.config import model_config
from jaxfold.model.structure_module import FoldIteration, StructureModule

# shared/reference/README.md: IPA, fold iteration, structure module (fp32, rtol 1e-4).
ATOL_SM = 1e-4  # activations, affines, sin/cos, rotations
ATOL_SM_POS = 5e-4  # positions and translations in Angstrom
NUM_VALID = 21  # of 23 residues

CONFIG = model_config("model_1_ptm", structure_module_num_layer=2)
SM = CONFIG.model.heads.structure_module
GC = CONFIG.model.global_config
CHUNK = 5  # 23 residues: 4 whole chunks of IPA query rows and a remainder
GC_CHUNKED = model_config("model_1_ptm", structure_module_num_layer=2, chunk_size=CHUNK).model.global_config


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


def run_fold_iteration(shared_dir, global_config) -> tuple[dict, dict]:
    """Our `FoldIteration` under `global_config` on DeepMind's recorded `fold_iteration` inputs and parameters
    -> `(io, {'activations': ..., 'outputs': ...})`, the tree `FOLD_ITERATION_OUTPUTS` paths point into."""
    io, params = module_reference(shared_dir, "fold_iteration")
    new_act, outputs = jax.jit(FoldIteration(SM, global_config).apply)(
        {"params": params["fold_iteration"]},
        {"act": io["input/act"], "affine": io["input/affine"]},
        io["input/sequence_mask"],
        io["input/initial_act"],
        io["input/static_feat_2d"],
        io["input/aatype"],
    )
    return io, {"activations": new_act, "outputs": outputs}


def assert_fold_iteration_output(io: dict, out: dict, path: str) -> None:
    """One `FOLD_ITERATION_OUTPUTS` path of a `run_fold_iteration` result against DeepMind's, valid residues."""
    actual, expected = np.asarray(get_path(out, path)), io[f"output/{path}"]
    assert_close_on(actual, expected, residue_valid(expected.shape, 0), atol_for(path), what=path)


def run_structure_module(shared_dir, global_config, pair_dtype=jnp.float32) -> tuple:
    """Our `StructureModule` under `global_config` on DeepMind's recorded `structure_module` inputs (the pair
    cast to `pair_dtype`) and parameters -> `(io, params, representations, batch, outputs)`."""
    io, params = module_reference(shared_dir, "structure_module")
    batch = {k[len("input/") :]: v for k, v in io.items() if k.startswith("input/")}
    representations = {"single": batch.pop("single"), "pair": jnp.asarray(batch.pop("pair"), pair_dtype)}
    out = jax.jit(StructureModule(SM, global_config).apply)(
        {"params": params["structure_module"]}, representations, batch
    )
    return io, params, representations, batch, jax.device_get(out)


def assert_structure_module_output(io: dict, out: dict, path: str) -> None:
    """One `structure_module_outputs()` path of a `run_structure_module` result against DeepMind's, on the
    valid residues (axis 1 of the per-layer `traj` and `sidechains`)."""
    expected = io[f"output/{path}"]
    # DeepMind's representations/structure_module is returned as `act` (the caller renames it).
    actual = np.asarray(out["act"] if path == "representations/structure_module" else get_path(out, path))
    residue_axis = 1 if path.startswith(("sidechains/", "traj")) else 0
    assert_close_on(actual, expected, residue_valid(expected.shape, residue_axis), atol_for(path), what=path)
