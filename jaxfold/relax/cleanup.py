"""Input checks and PDBFixer clean-up before minimisation (AlphaFold's ``relax/cleanup.py`` steps).

:func:`check_relaxable` rejects what Amber cannot parameterise or what would need invented backbone,
with a message naming the residues: non-standard residue types (``UNK``) and residues missing any of
N, CA, C. Missing side-chain atoms are allowed: PDBFixer builds them (reported, and not restrained
more than any other atom: they are restrained to where PDBFixer put them).

:func:`add_hydrogens` is AlphaFold's ``clean_protein`` without its unused branches: PDBFixer adds
missing heavy atoms (terminal OXT included) and hydrogens at pH 7; missing residues are never built.
"""

from __future__ import annotations

import io

import numpy as np

from jaxfold.common import protein as protein_lib
from jaxfold.common import residue_constants as rc
from jaxfold.relax._openmm import require_openmm

__all__ = ["RelaxInputError", "check_relaxable", "add_hydrogens", "residue_label"]

_BACKBONE = ("N", "CA", "C")
# A C-N distance beyond this (peptide bond 1.33 Å) means residues are missing between the two.
_MAX_PEPTIDE_BOND = 4.0


class RelaxInputError(ValueError):
    """A structure that relaxation cannot handle (one-line message naming the residues)."""


def residue_label(prot: protein_lib.Protein, i: int) -> str:
    """``'A:GLY17'`` for residue position ``i`` (chain, name, author number)."""
    name = rc.resnames[int(prot.aatype[i])] if int(prot.aatype[i]) < len(rc.resnames) else "UNK"
    return f"{prot.chain_ids[int(prot.chain_index[i])]}:{name}{int(prot.residue_index[i])}"


def _first(prot, positions, limit: int = 5) -> str:
    labels = [residue_label(prot, int(i)) for i in positions[:limit]]
    more = f" and {len(positions) - limit} more" if len(positions) > limit else ""
    return ", ".join(labels) + more


def check_relaxable(prot: protein_lib.Protein) -> dict:
    """Raises :class:`RelaxInputError` unless Amber can relax ``prot``; returns what PDBFixer will add.

    Returns ``{"missing_side_chain_atoms": int}`` (heavy atoms of standard residues absent in the input).
    """
    if prot.num_res == 0:
        raise RelaxInputError("cannot relax: the structure has no protein residues")
    unknown = np.flatnonzero(np.asarray(prot.aatype) >= rc.restype_num)
    if unknown.size:
        raise RelaxInputError(
            f"cannot relax: {unknown.size} non-standard residue(s) ({_first(prot, unknown)}) have no Amber "
            "parameters; relaxation needs the 20 standard amino acids (MSE is read as MET)"
        )
    backbone = [rc.atom_order[a] for a in _BACKBONE]
    missing = np.flatnonzero(np.asarray(prot.atom_mask)[:, backbone].min(axis=1) < 0.5)
    if missing.size:
        raise RelaxInputError(
            f"cannot relax: {missing.size} residue(s) lack backbone atoms N, CA or C ({_first(prot, missing)}); "
            "relaxation does not rebuild backbone"
        )
    if not np.all(np.isfinite(prot.atom_positions[np.asarray(prot.atom_mask) > 0.5])):
        raise RelaxInputError("cannot relax: the structure has non-finite (NaN/inf) coordinates")
    # OpenMM bonds consecutive residues of a chain whatever their distance: a gap (unobserved residues)
    # would become a stretched peptide bond that the minimiser closes by dragging both ends together.
    c_pos = prot.atom_positions[:-1, rc.atom_order["C"]]
    n_pos = prot.atom_positions[1:, rc.atom_order["N"]]
    same_chain = prot.chain_index[:-1] == prot.chain_index[1:]
    breaks = np.flatnonzero(same_chain & (np.linalg.norm(n_pos - c_pos, axis=-1) > _MAX_PEPTIDE_BOND))
    if breaks.size:
        pairs = ", ".join(
            f"{residue_label(prot, int(i))}-{residue_label(prot, int(i) + 1).split(':')[1]}" for i in breaks[:5]
        )
        raise RelaxInputError(
            f"cannot relax: {breaks.size} chain break(s) (C-N > {_MAX_PEPTIDE_BOND} Å between {pairs}): "
            "relaxation needs each chain continuous, as predictions are; split the chain at the gap"
        )
    expected = rc.STANDARD_ATOM_MASK[np.asarray(prot.aatype)].astype(bool)
    expected[:, rc.atom_order["OXT"]] = False  # only at C-termini; PDBFixer adds it there
    missing_atoms = int(np.sum(expected & (np.asarray(prot.atom_mask) < 0.5)))
    return {"missing_side_chain_atoms": missing_atoms}


def add_hydrogens(prot: protein_lib.Protein):
    """``(topology, positions)`` of ``prot`` with missing heavy atoms and hydrogens added by PDBFixer.

    The input is written through :func:`jaxfold.common.protein.to_pdb` (heavy atoms, author numbering,
    chain ids), so the output keeps the input's residue numbering and chains (``keepIds``).
    """
    _, app, _, pdbfixer = require_openmm()
    fixer = pdbfixer.PDBFixer(pdbfile=io.StringIO(protein_lib.to_pdb(prot)))
    # No SEQRES in our PDB text, so no gaps could be found; stated anyway: loops are never invented.
    fixer.missingResidues = {}
    fixer.findMissingAtoms()
    fixer.addMissingAtoms(seed=0)
    fixer.addMissingHydrogens(pH=7.0)
    # Round-trip through PDB text as AlphaFold does, so atom order and names are those OpenMM writes.
    out = io.StringIO()
    app.PDBFile.writeFile(fixer.topology, fixer.positions, out, keepIds=True)
    pdb = app.PDBFile(io.StringIO(out.getvalue()))
    return pdb.topology, pdb.positions
