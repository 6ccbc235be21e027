"""Tests of jaxfold.common.all_atom on a real protein (ubiquitin, PDB 1UBQ).

The structure is read into the atom37 layout with a tiny Biopython helper. Expensive
results (torsions, frames, rebuilt atoms) are computed once per module under `jax.jit`.
"""

from pathlib import Path

import jax
import numpy as np
import pytest

from jaxfold.common import all_atom
from jaxfold.common import residue_constants as rc
from jaxfold.common.geometry import Rigid, Rot3, Vec3

A = rc.atom_order

torsions_fn = jax.jit(all_atom.atom37_to_torsion_angles, static_argnames="placeholder_for_undefined")
frames_fn = jax.jit(all_atom.torsion_angles_to_frames)
atoms_fn = jax.jit(all_atom.frames_and_literature_positions_to_atom14_pos)
gt_frames_fn = jax.jit(all_atom.atom37_to_frames)
masks_fn = jax.jit(all_atom.make_atom14_masks)
to14_fn = jax.jit(all_atom.atom37_to_atom14)
to37_fn = jax.jit(all_atom.atom14_to_atom37)


# ---------------------------------------------------------------------------------------
# Loading the structure.
# ---------------------------------------------------------------------------------------


def load_atom37(pdb_path: Path, chain_id: str = "A"):
    """Reads one chain of a PDB file (first model) into atom37 arrays.

    Returns (aatype int32 [N], positions float32 [N, 37, 3], mask float32 [N, 37],
    author residue numbers [N]). Waters and other hetero groups are skipped; non-standard
    residue names map to UNK (20). Biopython keeps the first alternate location.
    """
    from Bio.PDB import PDBParser  # local import: only these tests need Biopython

    structure = PDBParser(QUIET=True).get_structure("s", str(pdb_path))
    residues = [r for r in structure[0][chain_id] if r.id[0] == " "]
    n = len(residues)
    aatype = np.full(n, rc.unk_restype_index, np.int32)
    positions = np.zeros((n, rc.atom_type_num, 3), np.float32)
    mask = np.zeros((n, rc.atom_type_num), np.float32)
    numbers = np.zeros(n, np.int32)
    for i, res in enumerate(residues):
        letter = rc.restype_3to1.get(res.get_resname())
        if letter is not None:
            aatype[i] = rc.restype_order[letter]
        numbers[i] = res.id[1]
        for atom in res:
            if atom.get_id() in A:
                positions[i, A[atom.get_id()]] = atom.coord
                mask[i, A[atom.get_id()]] = 1.0
    return aatype, positions, mask, numbers


@pytest.fixture(scope="module")
def ubq(shared_dir):
    path = shared_dir / "data" / "structures" / "pdb" / "1ubq.pdb"
    if not path.is_file():
        pytest.skip(f"{path} not found (shared test data incomplete)")
    aatype, pos, mask, numbers = load_atom37(path)
    assert rc.aatype_to_str_sequence(aatype).startswith("MQIFVKTLTGK")
    return {"aatype": aatype, "pos": pos, "mask": mask, "numbers": numbers}


@pytest.fixture(scope="module")
def torsions(ubq):
    out = torsions_fn(ubq["aatype"][None], ubq["pos"][None], ubq["mask"][None])
    return {k: np.asarray(v[0]) for k, v in out.items()}


@jax.jit
def backbone_frames(pos) -> Rigid:
    """True backbone frames: CA origin, C on +x, N in the xy plane (y > 0)."""
    ca = Vec3.from_array(pos[:, A["CA"]])
    return Rigid(Rot3.from_two_vectors(Vec3.from_array(pos[:, A["C"]]) - ca, Vec3.from_array(pos[:, A["N"]]) - ca), ca)


@pytest.fixture(scope="module")
def rebuilt(ubq, torsions):
    """Atoms rebuilt from the true backbone frames and the true torsion angles."""
    aatype = ubq["aatype"]
    frames = frames_fn(aatype, backbone_frames(ubq["pos"]), torsions["torsion_angles_sin_cos"])
    atom14 = np.asarray(atoms_fn(aatype, frames).to_array())
    masks = {k: np.asarray(v) for k, v in masks_fn(aatype).items()}
    true14 = np.asarray(to14_fn(ubq["pos"], masks["residx_atom14_to_atom37"], masks["atom14_atom_exists"]))
    resolved14 = np.asarray(to14_fn(ubq["mask"], masks["residx_atom14_to_atom37"], masks["atom14_atom_exists"]))
    return {"frames": frames, "atom14": atom14, "true14": true14, "resolved14": resolved14, "masks": masks}


def dihedral(p0, p1, p2, p3):
    """IUPAC dihedral angle in degrees, computed independently of the code under test."""
    b0, b1, b2 = p0 - p1, p2 - p1, p3 - p2
    b1 = b1 / np.linalg.norm(b1, axis=-1, keepdims=True)
    v = b0 - np.sum(b0 * b1, -1, keepdims=True) * b1
    w = b2 - np.sum(b2 * b1, -1, keepdims=True) * b1
    x = np.sum(v * w, -1)
    y = np.sum(np.cross(b1, v) * w, -1)
    return np.degrees(np.arctan2(y, x))


def angle_deg(sin_cos):
    return np.degrees(np.arctan2(sin_cos[..., 0], sin_cos[..., 1]))


def angle_diff(a, b):
    return np.abs((a - b + 180.0) % 360.0 - 180.0)


# ---------------------------------------------------------------------------------------
# Torsion angles.
# ---------------------------------------------------------------------------------------


def test_torsions_agree_with_independent_dihedrals(ubq, torsions):
    pos, aatype = ubq["pos"], ubq["aatype"]
    ang = angle_deg(torsions["torsion_angles_sin_cos"])
    tmask = torsions["torsion_angles_mask"]
    omega = dihedral(pos[:-1, A["CA"]], pos[:-1, A["C"]], pos[1:, A["N"]], pos[1:, A["CA"]])
    phi = dihedral(pos[:-1, A["C"]], pos[1:, A["N"]], pos[1:, A["CA"]], pos[1:, A["C"]])
    np.testing.assert_array_less(angle_diff(ang[1:, 0], omega), 1e-2)
    np.testing.assert_array_less(angle_diff(ang[1:, 1], phi), 1e-2)
    # psi is measured to this residue's O and mirrored; the true psi uses the next N.
    # They differ only by how far O sits from anti to N(i+1): a few degrees.
    psi = dihedral(pos[:-1, A["N"]], pos[:-1, A["CA"]], pos[:-1, A["C"]], pos[1:, A["N"]])
    assert np.median(angle_diff(ang[:-1, 2], psi)) < 3.0
    np.testing.assert_array_less(angle_diff(ang[:-1, 2], psi), 15.0)
    # Every defined chi matches the dihedral of its four atoms.
    checked = 0
    for i, restype in enumerate(aatype):
        for chi, atoms in enumerate(rc.chi_angles_atoms[rc.resnames[restype]]):
            assert tmask[i, 3 + chi] == 1
            expected = dihedral(*(pos[i, A[a]] for a in atoms))
            assert angle_diff(ang[i, 3 + chi], expected) < 1e-2, (i, chi)
            checked += 1
    assert checked > 100


def test_torsion_masks(ubq, torsions):
    tmask, aatype = torsions["torsion_angles_mask"], ubq["aatype"]
    assert tmask.shape == (len(aatype), 7)
    assert tmask[0, :2].tolist() == [0.0, 0.0]  # no previous residue
    assert tmask[1:, :3].all() and tmask[0, 2] == 1
    n_chis = np.asarray(rc.chi_angles_mask + [[0.0] * 4])[aatype].sum(-1)
    np.testing.assert_array_equal(tmask[:, 3:].sum(-1), n_chis)
    sin_cos = torsions["torsion_angles_sin_cos"]
    norms = np.linalg.norm(sin_cos, axis=-1)
    np.testing.assert_allclose(norms[tmask > 0], 1.0, atol=1e-5)


def test_helix_phi_psi(ubq, torsions):
    # Ubiquitin's alpha helix runs from Ile23 to Glu34.
    ang = angle_deg(torsions["torsion_angles_sin_cos"])
    helix = (ubq["numbers"] >= 24) & (ubq["numbers"] <= 32)
    assert helix.sum() == 9
    phi, psi = ang[helix, 1], ang[helix, 2]
    assert ((phi > -80) & (phi < -45)).all(), phi
    assert ((psi > -60) & (psi < -25)).all(), psi
    # Trans peptide bonds throughout.
    assert (np.abs(ang[1:, 0]) > 160).all()


def test_alt_torsions_are_the_angles_of_the_renamed_structure(ubq, torsions):
    aatype, pos = ubq["aatype"], ubq["pos"].copy()
    swapped_any = False
    for i, restype in enumerate(aatype):
        for name1, name2 in rc.residue_atom_renaming_swaps.get(rc.resnames[restype], {}).items():
            pos[i, [A[name1], A[name2]]] = pos[i, [A[name2], A[name1]]]
            swapped_any = True
    assert swapped_any
    renamed = torsions_fn(aatype[None], pos[None], ubq["mask"][None])
    alt = angle_deg(torsions["alt_torsion_angles_sin_cos"])
    got = angle_deg(np.asarray(renamed["torsion_angles_sin_cos"][0]))
    defined = torsions["torsion_angles_mask"] > 0
    # The swapped atom is only approximately the 180-degree image of its partner.
    assert angle_diff(got, alt)[defined].max() < 10.0
    periodic = np.asarray(rc.chi_pi_periodic)[aatype] > 0
    np.testing.assert_allclose(
        torsions["alt_torsion_angles_sin_cos"][:, 3:][periodic], -torsions["torsion_angles_sin_cos"][:, 3:][periodic]
    )


def test_placeholder_for_undefined_and_batching(ubq, torsions):
    aatype, pos, mask = ubq["aatype"], ubq["pos"], ubq["mask"]
    # Batch of two: the protein, and the protein with out-of-range aatype (> 20 is
    # treated as UNK, which has no chi angles).
    odd = np.full_like(aatype, 25)
    two = torsions_fn(
        np.stack([aatype, odd]), np.stack([pos, pos]), np.stack([mask, mask]), placeholder_for_undefined=True
    )
    sin_cos = np.asarray(two["torsion_angles_sin_cos"])
    tmask = np.asarray(two["torsion_angles_mask"])
    np.testing.assert_array_equal(tmask[0], torsions["torsion_angles_mask"])
    assert not tmask[1, :, 3:].any()
    np.testing.assert_array_equal(tmask[1, :, :3], tmask[0, :, :3])
    # AlphaFold's placeholder is (sin, cos) = (1, 0).
    undefined = tmask == 0
    np.testing.assert_array_equal(sin_cos[undefined], np.broadcast_to([1.0, 0.0], (undefined.sum(), 2)))
    defined = tmask[0] > 0
    np.testing.assert_allclose(sin_cos[0][defined], torsions["torsion_angles_sin_cos"][defined], atol=1e-6)


# ---------------------------------------------------------------------------------------
# Rebuilding atoms from frames and torsions.
# ---------------------------------------------------------------------------------------


def test_backbone_frame_matches_atom37_to_frames(ubq):
    gt = gt_frames_fn(ubq["aatype"], ubq["pos"], ubq["mask"])
    np.testing.assert_allclose(
        gt["rigidgroups_gt_frames"][:, 0], backbone_frames(ubq["pos"]).to_tensor_flat12(), atol=1e-6
    )
    assert np.asarray(gt["rigidgroups_gt_exists"])[:, 0].all()


def test_rebuilt_backbone(ubq, rebuilt):
    got, true = rebuilt["atom14"], rebuilt["true14"]
    # CA is the frame origin: exact.
    np.testing.assert_allclose(got[:, 1], true[:, 1], atol=1e-5)
    # C lies exactly on the true CA->C ray, at the literature distance.
    ca_c_true, ca_c_got = true[:, 2] - true[:, 1], got[:, 2] - got[:, 1]
    np.testing.assert_allclose(
        ca_c_got / np.linalg.norm(ca_c_got, axis=-1, keepdims=True),
        ca_c_true / np.linalg.norm(ca_c_true, axis=-1, keepdims=True),
        atol=1e-5,
    )
    np.testing.assert_array_less(np.linalg.norm(got[:, 2] - true[:, 2], axis=-1), 0.06)
    # N lies exactly in the true N-CA-C plane; its position differs only as much as
    # the N-CA-C angle deviates from ideal (1UBQ has angles from 103.6 to 120.7 deg).
    normal = np.cross(ca_c_true, true[:, 0] - true[:, 1])
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    np.testing.assert_allclose(np.sum((got[:, 0] - true[:, 1]) * normal, -1), 0.0, atol=1e-4)
    n_err = np.linalg.norm(got[:, 0] - true[:, 0], axis=-1)
    assert np.median(n_err) < 0.1 and n_err.max() < 0.3
    o_err = np.linalg.norm(got[:, 3] - true[:, 3], axis=-1)
    assert np.median(o_err) < 0.1 and o_err.max() < 0.3


def test_rebuilt_side_chains_land_near_true_atoms(rebuilt):
    """Chained rebuild from true torsions: errors grow toward the side-chain tips.

    Only the torsions are carried over; bond lengths and angles are the idealised
    literature values, so deviations of the real geometry (this 1987 structure has
    several) rotate everything downstream. CB depends on the backbone alone.
    """
    err = np.linalg.norm(rebuilt["atom14"] - rebuilt["true14"], axis=-1)
    resolved = rebuilt["resolved14"] > 0
    cb = err[:, 4][resolved[:, 4]]
    assert np.median(cb) < 0.15 and cb.max() < 0.4
    side = err[:, 4:][resolved[:, 4:]]
    assert np.median(side) < 0.3
    assert np.percentile(side, 90) < 1.0
    assert side.max() < 2.0
    # Atoms that do not exist are exactly zero.
    exists = rebuilt["masks"]["atom14_atom_exists"] > 0
    assert not rebuilt["atom14"][~exists].any()


def test_atoms_placed_by_true_group_frames(ubq, rebuilt):
    """Each atom placed by its own group's true frame: only local geometry differs."""
    gt = gt_frames_fn(ubq["aatype"], ubq["pos"], ubq["mask"])
    frames = Rigid.from_tensor_flat12(gt["rigidgroups_gt_frames"])
    placed = np.asarray(atoms_fn(ubq["aatype"], frames).to_array())
    err = np.linalg.norm(placed - rebuilt["true14"], axis=-1)
    resolved = rebuilt["resolved14"] > 0
    side = err[:, 4:][resolved[:, 4:]]
    assert np.median(side) < 0.12
    assert np.percentile(side, 95) < 0.3
    assert side.max() < 0.6
    assert err[:, 1].max() < 1e-5


def test_rebuilt_structure_reproduces_input_torsions_and_frames(ubq, torsions, rebuilt):
    """Self-consistency: torsions -> atoms -> torsions and frames -> atoms -> frames."""
    aatype, masks = ubq["aatype"], rebuilt["masks"]
    atom37 = np.asarray(to37_fn(rebuilt["atom14"], masks["residx_atom37_to_atom14"], masks["atom37_atom_exists"]))
    again = torsions_fn(aatype[None], atom37[None], masks["atom37_atom_exists"][None])
    chis = torsions["torsion_angles_mask"][:, 3:] > 0
    np.testing.assert_allclose(
        np.asarray(again["torsion_angles_sin_cos"][0])[:, 3:][chis],
        torsions["torsion_angles_sin_cos"][:, 3:][chis],
        atol=1e-4,
    )

    gt = gt_frames_fn(aatype, atom37, masks["atom37_atom_exists"])
    exists = np.asarray(gt["rigidgroups_gt_exists"]) > 0
    np.testing.assert_allclose(
        np.asarray(gt["rigidgroups_gt_frames"])[exists],
        np.asarray(rebuilt["frames"].to_tensor_flat12())[exists],
        atol=1e-4,
    )


def test_frames_are_rigid_and_start_from_backbone(ubq, torsions, rebuilt):
    frames = rebuilt["frames"]
    n = len(ubq["aatype"])
    assert frames.shape == (n, 8)
    flat = np.asarray(frames.to_tensor_flat12())
    bb = np.asarray(backbone_frames(ubq["pos"]).to_tensor_flat12())
    np.testing.assert_allclose(flat[:, 0], bb, atol=1e-6)  # group 0 = backbone frame
    # Frames of existing groups with defined torsions are proper rotations. (The
    # rotation is built from (sin, cos) as given, so an undefined torsion, e.g. the
    # first residue's pre-omega, can give a non-unit matrix; absent chi groups have
    # all-zero default frames.)
    rot = np.asarray(frames.rot.to_array(), np.float64)
    good = np.concatenate([np.ones((n, 1), bool), torsions["torsion_angles_mask"] > 0], -1)
    rot = rot[good]
    np.testing.assert_allclose(rot @ np.swapaxes(rot, -1, -2), np.broadcast_to(np.eye(3), rot.shape), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(rot), 1.0, atol=1e-5)


def test_ideal_residues_have_literature_bond_lengths():
    """Rebuilt idealised residues reproduce the Engh & Huber bonds and bond angles.

    The proline ring is closed only for particular chi1/chi2 values; its ring-closing
    bond (CD-N) and the two angles that span it are left out.
    """
    # 76 residues (every type, repeated) to reuse the functions compiled for 1UBQ.
    aatype = (np.arange(76) % 20).astype(np.int32)
    sin_cos = np.zeros((76, 7, 2), np.float32)
    sin_cos[..., 1] = -1.0  # every torsion at 180 degrees
    frames = frames_fn(aatype, Rigid.identity((76,)), sin_cos)
    pos = np.asarray(atoms_fn(aatype, frames).to_array())
    bonds, virtual_bonds, _ = rc.load_stereo_chemical_props()
    ring_closure = {frozenset(p) for p in (("CD", "N"), ("CG", "N"), ("CA", "CD"))}
    for restype in range(20):
        resname = rc.resnames[restype]
        names = rc.restype_name_to_atom14_names[resname]
        for tolerance, blist in ((0.05, bonds[resname]), (0.08, virtual_bonds[resname])):
            for b in blist:
                if resname == "PRO" and frozenset((b.atom1_name, b.atom2_name)) in ring_closure:
                    continue
                d = np.linalg.norm(pos[restype, names.index(b.atom1_name)] - pos[restype, names.index(b.atom2_name)])
                assert abs(d - b.length) < tolerance, (resname, b)


# ---------------------------------------------------------------------------------------
# atom14 <-> atom37 and masks.
# ---------------------------------------------------------------------------------------


def test_atom14_atom37_round_trip(ubq, rebuilt):
    masks, pos = rebuilt["masks"], ubq["pos"]
    to37 = lambda x: np.asarray(to37_fn(x, masks["residx_atom37_to_atom14"], masks["atom37_atom_exists"]))
    to14 = lambda x: np.asarray(to14_fn(x, masks["residx_atom14_to_atom37"], masks["atom14_atom_exists"]))
    exists37 = masks["atom37_atom_exists"]
    # atom37 -> atom14 -> atom37 keeps every standard atom (OXT has no atom14 slot).
    np.testing.assert_array_equal(to37(to14(pos)), pos * exists37[..., None])
    np.testing.assert_array_equal(to37(to14(ubq["mask"])), ubq["mask"] * exists37)
    assert ubq["mask"][-1, A["OXT"]] == 1 and exists37[-1, A["OXT"]] == 0
    # atom14 -> atom37 -> atom14 is exact.
    p14 = rebuilt["atom14"]
    np.testing.assert_array_equal(to14(to37(p14)), p14)
    # Trailing feature axes of any size work.
    feats = np.random.default_rng(0).normal(size=(len(pos), 14, 2, 5)).astype(np.float32)
    feats *= masks["atom14_atom_exists"][..., None, None]
    np.testing.assert_array_equal(to14(to37(feats)), feats)


def test_make_atom14_masks():
    aatype = np.array([rc.restype_order["G"], rc.restype_order["W"], 20], np.int32)
    m = {k: np.asarray(v) for k, v in all_atom.make_atom14_masks(aatype).items()}
    assert m["atom14_atom_exists"].shape == (3, 14)
    assert m["atom14_atom_exists"].dtype == np.float32
    assert m["residx_atom14_to_atom37"].dtype == np.int32
    assert m["residx_atom37_to_atom14"].shape == (3, 37)
    assert m["atom37_atom_exists"].shape == (3, 37)
    assert m["atom14_atom_exists"].sum(-1).tolist() == [4, 14, 0]
    assert m["atom37_atom_exists"].sum(-1).tolist() == [4, 14, 0]
    assert m["residx_atom14_to_atom37"][0, :4].tolist() == [0, 1, 2, 4]
    trp = rc.restype_name_to_atom14_names["TRP"]
    assert m["residx_atom37_to_atom14"][1, A["CH2"]] == trp.index("CH2")
    assert not m["residx_atom14_to_atom37"][2].any()
    # Leading batch dims pass through.
    assert all_atom.make_atom14_masks(aatype[None])["atom37_atom_exists"].shape == (1, 3, 37)


def test_pseudo_beta(ubq):
    aatype, pos, mask = ubq["aatype"], ubq["pos"], ubq["mask"]
    beta, beta_mask = all_atom.pseudo_beta_fn(aatype, pos, mask)
    is_gly = aatype == rc.restype_order["G"]
    assert is_gly.any()
    np.testing.assert_array_equal(np.asarray(beta)[is_gly], pos[is_gly, A["CA"]])
    np.testing.assert_array_equal(np.asarray(beta)[~is_gly], pos[~is_gly, A["CB"]])
    assert np.asarray(beta_mask).dtype == np.float32 and np.asarray(beta_mask).all()
    np.testing.assert_array_equal(all_atom.pseudo_beta_fn(aatype, pos), beta)


def test_get_chi_atom_indices():
    idx = np.asarray(all_atom.get_chi_atom_indices())
    assert idx.shape == (21, 4, 4)
    arg = rc.restype_order["R"]
    assert [rc.atom_types[i] for i in idx[arg, 3]] == ["CG", "CD", "NE", "CZ"]
    assert not idx[rc.restype_order["G"]].any() and not idx[20].any()
