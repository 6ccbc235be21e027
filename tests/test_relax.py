"""Amber relaxation (jaxfold.relax) on real structures from ../shared/data/structures.

Needs the `relax` extra (OpenMM, PDBFixer); without it only the install-message test runs.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import time

import numpy as np
import pytest

from jaxfold.common import protein
from jaxfold.common import residue_constants as rc

pytestmark = pytest.mark.timeout(120)

_SIDE = np.array([name not in ("N", "CA", "C", "O", "CB", "OXT") for name in rc.atom_types])


def _ubiquitin(shared_dir) -> protein.Protein:
    return protein.from_file(shared_dir / "data/structures/pdb/1ubq.pdb")


def _with_plddt(prot: protein.Protein, seed: int = 0) -> protein.Protein:
    """pLDDT-like B-factors: one value per residue, as a prediction has."""
    plddt = np.random.default_rng(seed).uniform(30, 95, prot.num_res).round(2)
    return dataclasses.replace(prot, b_factors=plddt[:, None] * prot.atom_mask)


def _introduce_clashes(prot: protein.Protein, count: int = 3):
    """Moves the side chains (beyond CB) of `count` residues so one of their atoms sits 1.4 Å from an
    atom of a residue at least 3 along the chain: real clashes and stretched CB-CG bonds."""
    pos, mask = prot.atom_positions.copy(), prot.atom_mask > 0.5
    moved = []
    for i in range(prot.num_res):
        if len(moved) == count:
            break
        side = np.flatnonzero(mask[i] & _SIDE)
        if side.size == 0 or any(abs(i - k) < 6 for k in moved):
            continue
        for j in range(prot.num_res):
            if abs(i - j) < 3:
                continue
            d = np.linalg.norm(pos[j][mask[j]][None, :, :] - pos[i, side][:, None, :], axis=-1)
            a, b = np.unravel_index(np.argmin(np.where((d > 3.4) & (d < 4.0), d, np.inf)), d.shape)
            if 3.4 < d[a, b] < 4.0:
                target = pos[j][mask[j]][b]
                v = (target - pos[i, side[a]]) / d[a, b]
                pos[i, side] += (d[a, b] - 1.4) * v
                moved.append(i)
                break
    assert len(moved) == count
    return dataclasses.replace(prot, atom_positions=pos), moved


def test_missing_openmm_gives_install_message(monkeypatch):
    from jaxfold.relax import relax_structure

    monkeypatch.setitem(sys.modules, "openmm", None)  # import openmm -> ImportError
    with pytest.raises(ImportError, match=r'pip install "jaxfold\[relax\]"') as info:
        relax_structure("ATOM\n")
    assert "\n" not in str(info.value)


def test_relax_removes_introduced_clashes(shared_dir):
    pytest.importorskip("openmm")
    pytest.importorskip("pdbfixer")
    from Bio.PDB import PDBParser

    from jaxfold.relax import find_violations, relax_structure

    original = _with_plddt(_ubiquitin(shared_dir))
    assert find_violations(original).num_violating_residues == 0
    clashed, moved = _introduce_clashes(original)
    before = find_violations(clashed)
    assert before.clashing_atoms > 0 and before.num_violating_residues >= len(moved)

    start = time.monotonic()
    remark = "REMARK   1 RANDOM PARAMETERS - NOT A PREDICTION"  # as outputs.to_pdb_string writes
    result = relax_structure(f"{remark}\n{protein.to_pdb(clashed)}", device="cpu", threads=2)
    assert result.pdb_string.startswith(remark + "\n")
    assert time.monotonic() - start < 60
    s = result.stats
    assert s["clashing_atoms_before"] == before.clashing_atoms
    assert s["violating_residues_before"] == before.num_violating_residues
    assert s["violating_residues_after"] == 0 and s["clashing_atoms_after"] == 0
    assert s["bond_violations_after"] == 0 and s["within_residue_violations_after"] == 0
    assert find_violations(result.protein).num_violating_residues == 0
    # AlphaFold reports 0.1-0.3 Å heavy-atom RMSD for relaxation.
    assert 0.02 < s["rmsd"] < 0.5
    assert s["energy_final"] < s["energy_initial"] and not s["timed_out"]
    # Away from the moved residues the structure stays where it was (restraints).
    keep = original.atom_mask > 0.5
    keep[moved] = False
    d = np.linalg.norm(result.protein.atom_positions - original.atom_positions, axis=-1)[keep]
    assert np.sqrt(np.mean(d**2)) < 0.4 and d.max() < 2.0

    # The PDB text parses with Biopython, has hydrogens, and keeps the pLDDT B-factors of every atom.
    structure = PDBParser(QUIET=True).get_structure("r", io.StringIO(result.pdb_string))
    residues = list(structure[0]["A"])
    assert len(residues) == original.num_res
    assert [r.id[1] for r in residues] == original.residue_index.tolist()
    assert any(a.element == "H" for a in residues[0])
    plddt = original.b_factors[:, rc.atom_order["CA"]]
    for res, want in zip(residues, plddt):
        assert {round(a.get_bfactor(), 2) for a in res} == {round(float(want), 2)}
    np.testing.assert_allclose(result.protein.b_factors[:, rc.atom_order["CA"]], plddt, atol=1e-4)
    np.testing.assert_array_equal(result.protein.aatype, original.aatype)


def test_relax_rebuilds_missing_side_chain_atoms_and_keeps_chains(shared_dir):
    """Two chains (1ycr: the p53 peptide and the first 30 residues of MDM2, to keep it fast); the first
    residue with a side chain beyond CB loses it, and PDBFixer rebuilds it."""
    pytest.importorskip("openmm")
    from jaxfold.relax import relax_structure

    full = protein.from_file(shared_dir / "data/structures/pdb/1ycr.pdb")
    keep = (full.chain_index == 1) | (np.cumsum(full.chain_index == 0) <= 30) & (full.chain_index == 0)
    prot = protein.Protein(
        **{
            f.name: (
                getattr(full, f.name)[keep] if f.name not in ("chain_ids", "insertion_codes") else getattr(full, f.name)
            )
            for f in dataclasses.fields(full)
        }
    )
    assert len(prot.chain_ids) == 2 and prot.num_res == 30 + 13
    i = next(k for k in range(prot.num_res) if (prot.atom_mask[k] * _SIDE).sum() >= 3)
    mask = prot.atom_mask.copy()
    mask[i, _SIDE] = 0
    stripped = dataclasses.replace(prot, atom_mask=mask, atom_positions=prot.atom_positions * mask[..., None])
    result = relax_structure(stripped, keep_hydrogens=False)
    assert result.stats["added_heavy_atoms"] == int((prot.atom_mask[i] * _SIDE).sum())
    np.testing.assert_array_equal(result.protein.atom_mask[i] > 0.5, prot.atom_mask[i] > 0.5)
    assert result.protein.chain_ids == prot.chain_ids
    np.testing.assert_array_equal(result.protein.residue_index, prot.residue_index)
    assert result.stats["violating_residues_after"] == 0
    assert result.stats["rmsd"] < 0.5
    assert not any(ln[76:78].strip() == "H" for ln in result.pdb_string.splitlines() if ln.startswith("ATOM"))


def test_relax_rejects_missing_backbone(shared_dir):
    pytest.importorskip("openmm")
    from jaxfold.relax import RelaxInputError, relax_structure

    prot = _ubiquitin(shared_dir)
    mask = prot.atom_mask.copy()
    mask[10, rc.atom_order["CA"]] = 0
    with pytest.raises(RelaxInputError, match=r"lack backbone atoms N, CA or C \(A:LYS11\)"):
        relax_structure(dataclasses.replace(prot, atom_mask=mask))


def test_relax_rejects_chain_gap(shared_dir):
    """3u8v chain A has residues 45-49 unobserved: a gap Amber would close with a stretched bond."""
    pytest.importorskip("openmm")
    from jaxfold.relax import RelaxInputError, relax_structure

    prot = protein.from_file(shared_dir / "data/structures/mmcif/3u8v.cif", chain_id="A")
    with pytest.raises(RelaxInputError, match=r"1 chain break\(s\) \(C-N > 4.0 Å between A:\w+44-\w+50\)"):
        relax_structure(prot)


def test_relax_rejects_nonstandard_residue(shared_dir):
    pytest.importorskip("openmm")
    from jaxfold.relax import RelaxInputError, relax_structure

    text = (shared_dir / "data/structures/pdb/1ubq.pdb").read_text()
    # Residue 48 (LYS) renamed to a residue type Amber has no template for: it is read as UNK.
    text = "\n".join(
        ln[:17] + "XYZ" + ln[20:] if ln.startswith("ATOM") and ln[22:26] == "  48" else ln for ln in text.splitlines()
    )
    with pytest.raises(RelaxInputError, match=r"non-standard residue\(s\) \(A:UNK48\)"):
        relax_structure(text)


def test_relax_bad_device_and_bounds(shared_dir):
    pytest.importorskip("openmm")
    from jaxfold.relax import relax_structure

    prot = _ubiquitin(shared_dir)
    with pytest.raises(ValueError, match="relax device must be one of"):
        relax_structure(prot, device="tpu")
    with pytest.raises(ValueError, match="must be positive"):
        relax_structure(prot, max_iterations=0)
    import openmm

    platforms = [openmm.Platform.getPlatform(i).getName() for i in range(openmm.Platform.getNumPlatforms())]
    if "CUDA" not in platforms:
        with pytest.raises(ValueError, match=r"OpenMM has no CUDA platform here \(available: .*CPU"):
            relax_structure(prot, device="cuda")


def test_relax_wall_time_bound(shared_dir):
    """A budget far below what minimisation needs stops the minimiser and says so, instead of running on."""
    pytest.importorskip("openmm")
    from jaxfold.relax import relax_structure

    clashed, _ = _introduce_clashes(_ubiquitin(shared_dir))
    start = time.monotonic()
    result = relax_structure(clashed, max_seconds=0.05, max_outer_iterations=3)
    assert time.monotonic() - start < 30
    assert result.stats["timed_out"] is True
    assert result.stats["outer_iterations"] == 1


def test_violations_count_bonds_and_never_join_chains(shared_dir):
    """1ycr's two chains renumbered 1..98 straight through: still no peptide bond between them; pulling one
    residue's N away from the previous C is a bond violation."""
    from jaxfold.relax import find_violations

    prot = protein.from_file(shared_dir / "data/structures/pdb/1ycr.pdb")
    through = dataclasses.replace(prot, residue_index=np.arange(prot.num_res) + 1)
    assert find_violations(through).num_violating_residues == 0
    pos = prot.atom_positions.copy()
    pos[20, rc.atom_order["N"]] += 1.0  # C(19)-N(20) stretched by up to 1 Å: far beyond 12 sigma
    v = find_violations(dataclasses.replace(prot, atom_positions=pos))
    assert v.bond_violations >= 1 and {19, 20} <= set(v.violating_residues)
