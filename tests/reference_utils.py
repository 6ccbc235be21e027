"""Loading DeepMind's reference outputs (`shared/reference/`) and comparing against them on valid positions."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jaxfold.weights import flat_to_tree, read_npz

# Tolerances from shared/reference/README.md (fp32, rtol 1e-4 everywhere).
RTOL = 1e-4
ATOL_TRUNK = 5e-5          # Evoformer sub-modules and blocks, extra-MSA block, template pair stack, heads
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
    assert not bad.any(), (f"{what}: {bad.sum()} of {valid.sum()} valid entries off; max abs err {err:.3g} "
                           f"(atol {atol}, rtol {rtol}); first at {np.argwhere(bad)[0].tolist()}")
    return err
