"""Loading DeepMind's reference outputs (`shared/reference/`) and comparing against them on valid positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxfold.weights import flat_to_tree, read_npz

# Tolerances from shared/reference/README.md (fp32, rtol 1e-4 everywhere).
RTOL = 1e-4
ATOL_TRUNK = 5e-5  # Evoformer sub-modules and blocks, extra-MSA block, template pair stack, heads
ATOL_FULL_ACTIVATIONS = 1e-4  # full model: representations, captured activations, logits


def module_reference(shared_dir: Path, name: str) -> tuple[dict, dict]:
    """(`input/*` + `output/*` arrays, parameter tree under the module's own scope) of one module reference."""
    base = shared_dir / "reference" / "modules"
    with np.load(base / f"{name}.npz") as data:
        io = {k: data[k] for k in data.files}
    return io, flat_to_tree(read_npz(base / f"{name}.params.npz"))


def max_abs_error(actual, expected, valid=None) -> float:
    """Largest |actual - expected| over positions where `valid` (broadcast) is true."""
    err = np.abs(np.asarray(actual, np.float64) - np.asarray(expected, np.float64))
    if valid is not None:
        err = np.where(np.broadcast_to(valid, err.shape), err, 0.0)
    return float(err.max())


def assert_close_on(actual, expected, valid, atol: float, rtol: float = RTOL, what: str = "") -> float:
    """`|a - e| <= atol + rtol |e|` wherever `valid`; returns the max abs error for reporting."""
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != reference {expected.shape}"
    valid = np.broadcast_to(np.ones((), bool) if valid is None else valid, actual.shape)
    bad = (np.abs(actual - expected) > atol + rtol * np.abs(expected)) & valid
    err = max_abs_error(actual, expected, valid)
    assert not bad.any(), (
        f"{what}: {bad.sum()} of {valid.sum()} valid entries off; max abs err {err:.3g} "
        f"(atol {atol}, rtol {rtol}); first at {np.argwhere(bad)[0].tolist()}"
    )
    return err


# Whole-model references (shared/reference/outputs*.npz): the shrunk depth and the per-key tolerances.
SHRINK = dict(evoformer_num_block=2, extra_msa_stack_num_block=1, structure_module_num_layer=2)


def tolerance(key: str) -> float:
    """atol for one output key (README table, full-model rows)."""
    if key == "confidence/ptm":
        return 1e-5
    if key in (
        "confidence/plddt",
        "confidence/predicted_aligned_error",
        "confidence/max_predicted_aligned_error",
        "confidence/ranking_confidence",
    ):
        return 1e-3
    if key.startswith("structure_module/"):
        if "angles_sin_cos" in key or "/frames/rot/" in key:
            return 5e-4
        if key.endswith(("_mask",)):
            return 0.0
        return 1e-3  # positions, traj, affines, frame translations (Angstrom)
    return 1e-4  # representations, logits, probabilities, bins


def reference(shared_dir, name):
    with np.load(shared_dir / "reference" / f"{name}.npz") as data:
        return {k: data[k] for k in data.files}


def compare_all(outputs, ref):
    errors = {}
    for key, expected in ref.items():
        if key.startswith("captured/"):
            continue
        assert key in outputs, f"output {key} missing"
        errors[key] = assert_close_on(outputs[key], expected, None, tolerance(key), what=key)
    return errors
