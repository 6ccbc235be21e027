"""``relax_structure``: AlphaFold's Amber relaxation pipeline (``AmberRelaxation.process`` / ``run_pipeline``).

Rounds of: PDBFixer adds hydrogens (and missing side-chain atoms), restrained Amber99SB minimisation,
violation check. While violations remain (and up to ``max_outer_iterations`` rounds), the next round
starts from the minimised structure with the violating residues unrestrained, as in AlphaFold. Each
minimisation is retried up to ``max_attempts`` times on an OpenMM failure. The whole call has a wall-clock
budget (``max_seconds``); the minimiser stops where it is when the budget runs out and the stats say so.

The output keeps the input's chains, residue numbering and B-factors (pLDDT for predictions): heavy
atoms keep their own value, added atoms (hydrogens, rebuilt side chains) take their residue's CA value.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np

from jaxfold.common import protein as protein_lib
from jaxfold.common import residue_constants as rc
from jaxfold.relax import amber, cleanup
from jaxfold.relax.violations import find_violations

__all__ = ["RelaxResult", "RelaxError", "relax_structure", "STIFFNESS", "TOLERANCE"]

logger = logging.getLogger(__name__)

# AlphaFold's run_alphafold.py constants.
STIFFNESS = 10.0  # kcal/mol/Å²
TOLERANCE = 2.39  # kcal/mol
MAX_OUTER_ITERATIONS = 3


class RelaxError(RuntimeError):
    """Minimisation failed on every attempt (one-line message)."""


@dataclasses.dataclass(frozen=True)
class RelaxResult:
    """A relaxed structure.

    pdb_string: PDB text as AlphaFold writes it (hydrogens included unless ``keep_hydrogens=False``;
      input REMARK lines, chains, numbering and B-factors kept).
    protein: the relaxed heavy atoms as a :class:`jaxfold.common.protein.Protein` (for mmCIF output).
    stats: JSON-ready numbers: ``violating_residues_before/after``, ``clashing_atoms_before/after``,
      ``bond_violations_before/after``, ``within_residue_violations_before/after``, ``rmsd`` (heavy
      atoms of the input, Å), ``energy_initial/final`` (kcal/mol, first and last round),
      ``outer_iterations``, ``minimiser_iterations``, ``attempts``, ``unrestrained_residues``,
      ``added_heavy_atoms``, ``timed_out``, ``device``, ``time_s``.
    """

    pdb_string: str
    protein: protein_lib.Protein
    stats: dict[str, Any]


def _heavy_rmsd(a: protein_lib.Protein, b: protein_lib.Protein) -> float:
    """RMSD (Å, no superposition: restraints keep the frame) over heavy atoms present in both."""
    if a.num_res != b.num_res or not np.array_equal(a.aatype, b.aatype):
        raise RelaxError("relaxed structure does not match the input residue for residue (internal error)")
    mask = (a.atom_mask > 0.5) & (b.atom_mask > 0.5)
    diff = (a.atom_positions - b.atom_positions)[mask]
    return float(np.sqrt(np.mean(np.sum(diff**2, axis=-1)))) if diff.size else 0.0


def _residue_bfactors(prot: protein_lib.Protein) -> np.ndarray:
    """Per-residue B-factor `[N_res]`: the CA's (pLDDT is constant over a predicted residue)."""
    return prot.b_factors[:, rc.atom_order["CA"]]


def _with_bfactors(pdb_string: str, prot: protein_lib.Protein, keep_hydrogens: bool, remarks: list[str]) -> str:
    """Rewrites the B-factor column of OpenMM's PDB text with the input's values (and drops H if asked)."""
    key_of = {}
    per_res = _residue_bfactors(prot)
    for i in range(prot.num_res):
        key_of[(prot.chain_ids[int(prot.chain_index[i])], int(prot.residue_index[i]))] = i
    lines = list(remarks)
    for line in pdb_string.splitlines():
        if line.startswith(("ATOM", "HETATM")):
            element = line[76:78].strip()
            if element == "H" and not keep_hydrogens:
                continue
            i = key_of.get((line[21].strip(), int(line[22:26])))
            if i is None:
                raise RelaxError(f"relaxed PDB has a residue not in the input: {line[17:27]!r} (internal error)")
            name = line[12:16].strip()
            slot = rc.atom_order.get(name)
            bf = prot.b_factors[i, slot] if slot is not None and prot.atom_mask[i, slot] > 0.5 else per_res[i]
            line = f"{line[:60]}{bf:6.2f}{line[66:]}"
        elif line.startswith(("REMARK", "CRYST1")):
            continue  # OpenMM's own header; the input's REMARKs are kept instead
        lines.append(line)
    return "\n".join(lines) + "\n"


def _minimise_with_retries(prot, exclude, *, max_attempts, **kwargs) -> tuple[amber.Minimised, int]:
    last = None
    for attempt in range(1, max_attempts + 1):
        try:
            topology, positions = cleanup.add_hydrogens(prot)
            return amber.minimise(topology, positions, exclude_residues=exclude, **kwargs), attempt
        except ValueError:
            raise  # bad arguments (device, iterations): retrying cannot help
        except Exception as e:  # noqa: BLE001 - OpenMMException and friends
            logger.info("minimisation attempt %d failed: %s", attempt, e)
            last = e
    raise RelaxError(f"minimisation failed after {max_attempts} attempt(s): {last}")


def relax_structure(
    structure: str | protein_lib.Protein,
    *,
    device: str = "cpu",
    stiffness: float = STIFFNESS,
    tolerance: float = TOLERANCE,
    max_outer_iterations: int = MAX_OUTER_ITERATIONS,
    max_iterations: int = 2000,
    max_seconds: float = 600.0,
    max_attempts: int = 3,
    keep_hydrogens: bool = True,
    threads: int | None = None,
) -> RelaxResult:
    """Amber-relaxes a protein structure (AlphaFold's final step).

    Args:
      structure: PDB text (e.g. an ``*_unrelaxed_*.pdb``) or a :class:`Protein`.
      device: 'cpu' or 'cuda' (OpenMM platform).
      stiffness: heavy-atom restraint constant, kcal/mol/Å² (AlphaFold: 10).
      tolerance: minimiser tolerance, kcal/mol (AlphaFold: 2.39; see ``amber.minimise``).
      max_outer_iterations: rounds of minimisation while violations remain (AlphaFold: 3).
      max_iterations: L-BFGS iterations per round (AlphaFold: unbounded; bounded here).
      max_seconds: wall-clock budget of the whole call; the minimiser stops where it is when it runs out.
      max_attempts: tries per round when OpenMM fails.
      keep_hydrogens: keep the hydrogens PDBFixer added in ``pdb_string`` (AlphaFold does).
      threads: OpenMM CPU threads (None: all cores).

    Raises:
      ImportError: OpenMM / PDBFixer missing (the message says ``pip install "jaxfold[relax]"``).
      cleanup.RelaxInputError (a ValueError): non-standard residues, missing backbone atoms, empty input.
      ValueError: an unknown or unavailable ``device``, non-positive bounds.
      RelaxError: minimisation failed on every attempt.
    """
    from jaxfold.relax._openmm import require_openmm  # noqa: PLC0415

    require_openmm()
    start = time.monotonic()
    if max_outer_iterations < 1 or max_iterations < 1 or max_seconds <= 0 or max_attempts < 1:
        raise ValueError("max_outer_iterations, max_iterations, max_attempts and max_seconds must be positive")
    amber.openmm_platform(device)  # fail early on a bad device
    remarks = []
    if isinstance(structure, str):
        remarks = [ln for ln in structure.splitlines() if ln.startswith("REMARK")]
        prot = protein_lib.from_pdb_string(structure)
    elif isinstance(structure, protein_lib.Protein):
        prot = structure
    else:
        raise TypeError(f"structure must be PDB text or a Protein, got {type(structure).__name__}")
    added = cleanup.check_relaxable(prot)["missing_side_chain_atoms"]
    before = find_violations(prot)

    deadline = start + float(max_seconds)
    current, exclude = prot, set()
    energies, iterations, attempts, timed_out = [], 0, 0, False
    after, minimised = before, None
    for round_ in range(1, max_outer_iterations + 1):
        minimised, tries = _minimise_with_retries(
            current,
            sorted(exclude),
            max_attempts=max_attempts,
            stiffness=stiffness,
            tolerance=tolerance,
            max_iterations=max_iterations,
            deadline=deadline,
            device=device,
            threads=threads,
        )
        attempts += tries
        iterations += minimised.iterations
        energies.append((minimised.energy_initial, minimised.energy_final))
        current = protein_lib.from_pdb_string(minimised.pdb_string)
        after = find_violations(current)
        timed_out = timed_out or minimised.timed_out
        if after.num_violating_residues == 0 or time.monotonic() > deadline:
            break
        exclude |= set(after.violating_residues)

    relaxed = dataclasses.replace(current, b_factors=_carry_bfactors(prot, current))
    stats = {
        **before.as_dict("_before"),
        **after.as_dict("_after"),
        "rmsd": _heavy_rmsd(prot, relaxed),
        "energy_initial": energies[0][0],
        "energy_final": energies[-1][1],
        "outer_iterations": len(energies),
        "minimiser_iterations": iterations,
        "attempts": attempts,
        "unrestrained_residues": len(exclude),
        "added_heavy_atoms": added,
        "timed_out": timed_out,
        "device": device,
        "time_s": time.monotonic() - start,
    }
    pdb = _with_bfactors(minimised.pdb_string, prot, keep_hydrogens, remarks)
    return RelaxResult(pdb_string=pdb, protein=relaxed, stats=stats)


def _carry_bfactors(src: protein_lib.Protein, dst: protein_lib.Protein) -> np.ndarray:
    """``dst``'s B-factors `[N_res, 37]` from ``src``: each atom's own, added atoms their residue's CA."""
    per_res = _residue_bfactors(src)[:, None]
    own = src.atom_mask > 0.5
    return np.where(own, src.b_factors, per_res) * dst.atom_mask
