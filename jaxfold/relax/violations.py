"""Structural violations of a protein: the numbers Amber relaxation is judged by.

AlphaFold's ``relax.amber_minimize.get_violation_metrics`` (v2.3.2): the structure module's violation
checks (``jaxfold.losses.find_structural_violations``) run on heavy-atom coordinates with the relax
thresholds, bond lengths and angles within 12 standard deviations of Engh & Huber, and no two atoms of
different residues closer than the sum of their van der Waals radii minus 1.5 Å.

Plain numpy in, plain Python numbers out; no compilation (eager JAX on a few small arrays).
"""

from __future__ import annotations

import dataclasses
import types

import numpy as np

from jaxfold.common import protein as protein_lib

__all__ = ["VIOLATION_TOLERANCE_FACTOR", "CLASH_OVERLAP_TOLERANCE", "Violations", "find_violations"]

# AlphaFold's relax thresholds (amber_minimize.find_violations).
VIOLATION_TOLERANCE_FACTOR = 12.0
CLASH_OVERLAP_TOLERANCE = 1.5


@dataclasses.dataclass(frozen=True)
class Violations:
    """Violation counts of one structure.

    violating_residues: residues (0-based positions in the protein) with any violation.
    clashing_atoms: heavy atoms closer than allowed to an atom of another residue.
    bond_violations: peptide-bond length or angle (C-N, CA-C-N, C-N-CA) outliers.
    within_residue_atoms: atoms with an intra-residue distance outside its bounds.
    """

    violating_residues: tuple[int, ...]
    clashing_atoms: int
    bond_violations: int
    within_residue_atoms: int

    @property
    def num_violating_residues(self) -> int:
        return len(self.violating_residues)

    def as_dict(self, suffix: str = "") -> dict:
        return {
            f"violating_residues{suffix}": self.num_violating_residues,
            f"clashing_atoms{suffix}": self.clashing_atoms,
            f"bond_violations{suffix}": self.bond_violations,
            f"within_residue_violations{suffix}": self.within_residue_atoms,
        }


def find_violations(prot: protein_lib.Protein) -> Violations:
    """Violations of ``prot`` (heavy atoms; hydrogens are not in the atom37 layout)."""
    # Imported here: JAX is only needed when violations are actually computed.
    import jax.numpy as jnp  # noqa: PLC0415

    from jaxfold import losses  # noqa: PLC0415
    from jaxfold.common import all_atom  # noqa: PLC0415

    aatype = np.asarray(prot.aatype, np.int32)
    masks = {k: np.asarray(v) for k, v in all_atom.make_atom14_masks(aatype).items()}
    # Only atoms that are both expected for the residue type and present in the file take part.
    present14 = np.asarray(
        all_atom.atom37_to_atom14(
            jnp.asarray(prot.atom_mask), masks["residx_atom14_to_atom37"], masks["atom14_atom_exists"]
        )
    )
    exists14 = masks["atom14_atom_exists"] * (present14 > 0.5)
    pos14 = all_atom.atom37_to_atom14(
        jnp.asarray(prot.atom_positions), masks["residx_atom14_to_atom37"], masks["atom14_atom_exists"]
    )
    # Chain c is shifted by c * (span + 2): consecutive residues of two chains then differ by >= 2, so the
    # peptide-bond checks (which need a difference of exactly 1) never join two chains.
    resnum = np.asarray(prot.residue_index, np.int64)
    span = int(resnum.max() - resnum.min()) if resnum.size else 0
    residue_index = resnum + (span + 2) * np.asarray(prot.chain_index, np.int64)
    batch = {
        "aatype": jnp.asarray(aatype),
        "atom14_atom_exists": jnp.asarray(exists14, jnp.float32),
        "residue_index": jnp.asarray(residue_index, jnp.int32),
        "residx_atom14_to_atom37": jnp.asarray(masks["residx_atom14_to_atom37"]),
    }
    cfg = types.SimpleNamespace(
        violation_tolerance_factor=VIOLATION_TOLERANCE_FACTOR, clash_overlap_tolerance=CLASH_OVERLAP_TOLERANCE
    )
    out = losses.find_structural_violations(batch, pos14, cfg)
    between = out["between_residues"]
    bond = (
        np.asarray(between["c_n_violation_mask"])
        + np.asarray(between["ca_c_n_violation_mask"])
        + np.asarray(between["c_n_ca_violation_mask"])
    )
    per_residue = np.asarray(out["total_per_residue_violations_mask"]) > 0
    return Violations(
        violating_residues=tuple(int(i) for i in np.flatnonzero(per_residue)),
        clashing_atoms=int(np.sum(np.asarray(between["clashes_per_atom_clash_mask"]) > 0)),
        bond_violations=int(np.sum(bond > 0)),
        within_residue_atoms=int(np.sum(np.asarray(out["within_residues"]["per_atom_violations"]) > 0)),
    )
