"""Tests of jaxfold.common.residue_constants: orders, tables and derived arrays.

Expected values that are facts (orders, atom masks, HHblits encodings) are spelled
out literally here so that a silent edit of a table is caught.
"""

import numpy as np
import pytest

from jaxfold.common import residue_constants as rc

# ---------------------------------------------------------------------------------------
# Orders.
# ---------------------------------------------------------------------------------------


def test_residue_order_is_alphabetical_by_three_letter_code():
    three = [rc.restype_1to3[r] for r in rc.restypes]
    assert three == sorted(rc.restype_1to3.values())
    assert "".join(rc.restypes) == "ARNDCQEGHILKMFPSTWYV"
    assert rc.restype_num == 20
    assert rc.unk_restype_index == 20
    assert rc.restypes_with_x[20] == "X"
    assert rc.restype_order_with_x["X"] == 20
    assert rc.resnames[-1] == "UNK" and len(rc.resnames) == 21
    assert all(rc.restype_3to1[rc.restype_1to3[r]] == r for r in rc.restypes)
    assert rc.resname_to_idx["PRO"] == 14


def test_atom_order():
    assert rc.atom_type_num == 37
    assert rc.atom_types[:5] == ["N", "CA", "C", "CB", "O"]
    assert rc.atom_types[-1] == "OXT"
    assert rc.atom_order["CD1"] == 12
    assert len(set(rc.atom_types)) == 37


@pytest.mark.parametrize(
    "resname,count",
    [
        ("ALA", 5),
        ("ARG", 11),
        ("ASN", 8),
        ("ASP", 8),
        ("CYS", 6),
        ("GLN", 9),
        ("GLU", 9),
        ("GLY", 4),
        ("HIS", 10),
        ("ILE", 8),
        ("LEU", 8),
        ("LYS", 9),
        ("MET", 8),
        ("PHE", 11),
        ("PRO", 7),
        ("SER", 6),
        ("THR", 7),
        ("TRP", 14),
        ("TYR", 12),
        ("VAL", 7),
    ],
)
def test_heavy_atom_counts(resname, count):
    assert len(rc.residue_atoms[resname]) == count
    names14 = [n for n in rc.restype_name_to_atom14_names[resname] if n]
    assert sorted(names14) == sorted(rc.residue_atoms[resname])
    assert sorted(a[0] for a in rc.rigid_group_atom_positions[resname]) == sorted(rc.residue_atoms[resname])


def test_standard_atom_mask_literal():
    rows = [
        "11111                                ",  # ALA
        "111111     1           1     11 1    ",  # ARG
        "111111         11                    ",  # ASN
        "111111          11                   ",  # ASP
        "11111     1                          ",  # CYS
        "111111     1             11          ",  # GLN
        "111111     1              11         ",  # GLU
        "111 1                                ",  # GLY
        "111111       11     1    1           ",  # HIS
        "11111 11    1                        ",  # ILE
        "111111      11                       ",  # LEU
        "111111     1       1               1 ",  # LYS
        "111111            11                 ",  # MET
        "111111      11      11          1    ",  # PHE
        "111111     1                         ",  # PRO
        "11111   1                            ",  # SER
        "11111  1 1                           ",  # THR
        "111111      11       11 1   1    11  ",  # TRP
        "111111      11      11         11    ",  # TYR
        "11111 11                             ",  # VAL
        "                                     ",  # UNK
    ]
    expected = np.array([[c == "1" for c in row] for row in rows], dtype=np.int32)
    np.testing.assert_array_equal(rc.STANDARD_ATOM_MASK, expected)
    np.testing.assert_array_equal(rc.restype_atom37_mask, expected.astype(np.float32))


# ---------------------------------------------------------------------------------------
# Sequences and alphabets.
# ---------------------------------------------------------------------------------------


def test_sequence_to_onehot_standard():
    np.testing.assert_array_equal(rc.sequence_to_onehot("ARNDCQEGHILKMFPSTWYV", rc.restype_order), np.eye(20))


def test_sequence_to_onehot_hhblits():
    one_hot = rc.sequence_to_onehot("ABCDEFGHIJKLMNOPQRSTUVWXYZ-", rc.HHBLITS_AA_TO_ID)
    expected = [0, 2, 1, 2, 3, 4, 5, 6, 7, 20, 8, 9, 10, 11, 20, 12, 13, 14, 15, 16, 1, 17, 18, 20, 19, 3, 21]
    np.testing.assert_array_equal(one_hot.argmax(-1), expected)
    assert one_hot.shape == (27, 22) and one_hot.dtype == np.int32
    assert (one_hot.sum(-1) == 1).all()


def test_sequence_to_onehot_unknown_to_x():
    out = rc.sequence_to_onehot("ABCDEFGHIJKLMNOPQRSTUVWXYZ", rc.restype_order_with_x, map_unknown_to_x=True)
    expected = [0, 20, 4, 3, 6, 13, 7, 8, 9, 20, 11, 10, 12, 2, 20, 14, 5, 1, 15, 16, 20, 19, 17, 20, 18, 20]
    np.testing.assert_array_equal(out.argmax(-1), expected)


@pytest.mark.parametrize("seq", ["aaa", "---", "...", ">TEST"])
def test_sequence_to_onehot_rejects_non_residue_characters(seq):
    with pytest.raises(ValueError):
        rc.sequence_to_onehot(seq, rc.restype_order_with_x, map_unknown_to_x=True)


def test_sequence_to_onehot_error_names_letter_and_position():
    with pytest.raises(ValueError, match=r"'B'.*position 2"):
        rc.sequence_to_onehot("ACB", rc.restype_order)
    with pytest.raises(ValueError, match=r"'a'.*position 1"):
        rc.sequence_to_onehot("Aa", rc.restype_order_with_x, map_unknown_to_x=True)


def test_sequence_to_onehot_rejects_gapped_mapping():
    with pytest.raises(ValueError, match="without any gaps"):
        rc.sequence_to_onehot("A", {"A": 0, "C": 2})


def test_hhblits_to_our_aatype_map():
    assert len(rc.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE) == 22
    assert rc.restypes_with_x_and_gap == rc.restypes + ["X", "-"]
    for hh_id, ours in enumerate(rc.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE):
        assert rc.restypes_with_x_and_gap[ours] == rc.ID_TO_HHBLITS_AA[hh_id]
    assert sorted(rc.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE) == list(range(22))
    for letter, hh_id in rc.HHBLITS_AA_TO_ID.items():
        if letter in rc.ID_TO_HHBLITS_AA.values():
            assert rc.ID_TO_HHBLITS_AA[hh_id] == letter


def test_aatype_to_str_sequence_round_trip():
    seq = "MQIFVKTLTGKX"
    aatype = rc.sequence_to_onehot(seq, rc.restype_order_with_x).argmax(-1)
    assert rc.aatype_to_str_sequence(aatype) == seq
    assert rc.aatype_to_str_sequence(np.array([20, 0])) == "XA"


# ---------------------------------------------------------------------------------------
# Chi angles.
# ---------------------------------------------------------------------------------------


def test_chi_tables_agree():
    for restype, letter in enumerate(rc.restypes):
        resname = rc.restype_1to3[letter]
        n_chi = len(rc.chi_angles_atoms[resname])
        assert rc.chi_angles_mask[restype] == [1.0] * n_chi + [0.0] * (4 - n_chi)
        for chi, atoms in enumerate(rc.chi_angles_atoms[resname]):
            assert len(atoms) == 4
            np.testing.assert_array_equal(rc.chi_angles_atom_indices[restype, chi], [rc.atom_order[a] for a in atoms])
            # Consecutive chis share three atoms (they walk out along the chain).
            if chi > 0:
                assert rc.chi_angles_atoms[resname][chi - 1][1:] == atoms[:3]
    assert [len(rc.chi_angles_atoms[n]) for n in ("ALA", "CYS", "HIS", "MET", "LYS")] == [0, 1, 2, 3, 4]
    assert len(rc.chi_pi_periodic) == 21 and len(rc.chi_angles_mask) == 20


def test_chi_groups_for_atom():
    for (resname, atom), groups in rc.chi_groups_for_atom.items():
        for chi, position in groups:
            assert rc.chi_angles_atoms[resname][chi][position] == atom


def test_chi_atom_one_hots():
    assert rc.chi_atom_1_one_hot.shape == (21, 37, 4)
    arg = rc.restype_order["R"]
    for chi in range(4):
        atom = rc.chi_angles_atoms["ARG"][chi][1]
        assert rc.chi_atom_1_one_hot[arg, rc.atom_order[atom], chi] == 1
    # AlphaFold quirk: a missing chi is one-hot on the last slot (OXT), not all zero.
    ala = rc.restype_order["A"]
    assert rc.chi_atom_2_one_hot[ala, rc.atom_order["OXT"]].tolist() == [1, 1, 1, 1]
    assert rc.chi_atom_2_one_hot[20].sum() == 0


def test_pi_periodic_chis_are_last_chi_of_ambiguous_residues():
    for restype, letter in enumerate(rc.restypes):
        resname = rc.restype_1to3[letter]
        periodic = rc.chi_pi_periodic[restype]
        if resname in rc.residue_atom_renaming_swaps:
            last = len(rc.chi_angles_atoms[resname]) - 1
            assert periodic == [1.0 if i == last else 0.0 for i in range(4)]
            # The chi's fourth atom is one of the swapped names.
            assert rc.chi_angles_atoms[resname][last][3] in rc.residue_atom_renaming_swaps[resname]
        else:
            assert sum(periodic) == 0


# ---------------------------------------------------------------------------------------
# Atom14 / atom37 tables.
# ---------------------------------------------------------------------------------------


def test_atom14_atom37_maps():
    assert rc.restype_atom14_to_atom37.shape == (21, 14)
    assert rc.restype_atom37_to_atom14.shape == (21, 37)
    for restype, letter in enumerate(rc.restypes):
        names = rc.restype_name_to_atom14_names[rc.restype_1to3[letter]]
        for i14, name in enumerate(names):
            assert rc.restype_atom14_mask[restype, i14] == float(bool(name))
            if name:
                i37 = rc.restype_atom14_to_atom37[restype, i14]
                assert rc.atom_types[i37] == name
                assert rc.restype_atom37_to_atom14[restype, i37] == i14
    assert not rc.restype_atom14_to_atom37[20].any()
    assert not rc.restype_atom14_mask[20].any()
    # Backbone always in slots 0..3.
    assert (rc.restype_atom14_to_atom37[:20, :4] == [0, 1, 2, 4]).all()


def test_rigid_group_tables_are_consistent():
    assert rc.restype_atom14_to_rigid_group.shape == (21, 14)
    assert rc.restype_atom14_rigid_group_positions.shape == (21, 14, 3)
    his = rc.restype_order["H"]
    ne2 = rc.restype_name_to_atom14_names["HIS"].index("NE2")
    assert rc.restype_atom14_to_rigid_group[his, ne2] == 5
    np.testing.assert_allclose(rc.restype_atom14_rigid_group_positions[his, ne2], [2.145, -0.466, 0.004])
    # Backbone N, CA, C and CB in the backbone group, O in the psi group.
    for restype in range(20):
        assert list(rc.restype_atom14_to_rigid_group[restype, :4]) == [0, 0, 0, 3]
    # The atom that defines each chi lies in its group's xy plane with y > 0.
    for restype, letter in enumerate(rc.restypes):
        resname = rc.restype_1to3[letter]
        names = rc.restype_name_to_atom14_names[resname]
        for chi, atoms in enumerate(rc.chi_angles_atoms[resname]):
            i14 = names.index(atoms[3])
            assert rc.restype_atom14_to_rigid_group[restype, i14] == 4 + chi
            x, y, z = rc.restype_atom14_rigid_group_positions[restype, i14]
            assert y > 0 and abs(z) < 1e-6, (resname, atoms[3])


def test_default_frames_are_rigid_transforms():
    frames = rc.restype_rigid_group_default_frame
    assert frames.shape == (21, 8, 4, 4) and frames.dtype == np.float32
    assert not frames[20].any()  # UNK: all zeros, as in AlphaFold
    group_exists = np.ones([20, 8], bool)
    group_exists[:, 4:] = np.asarray(rc.chi_angles_mask) > 0
    for restype in range(20):
        for group in range(8):
            m = frames[restype, group]
            if not group_exists[restype, group]:
                assert not m.any()
                continue
            rot = m[:3, :3].astype(np.float64)
            np.testing.assert_allclose(rot @ rot.T, np.eye(3), atol=1e-6)
            assert np.linalg.det(rot) == pytest.approx(1.0, abs=1e-6)
            np.testing.assert_array_equal(m[3], [0, 0, 0, 1])
        np.testing.assert_array_equal(frames[restype, 0], np.eye(4))
        np.testing.assert_array_equal(frames[restype, 1], np.eye(4))


def test_default_frame_origins_sit_on_axis_atoms():
    frames = rc.restype_rigid_group_default_frame
    for restype, letter in enumerate(rc.restypes):
        resname = rc.restype_1to3[letter]
        pos = {n: np.array(p) for n, _, p in rc.rigid_group_atom_positions[resname]}
        np.testing.assert_allclose(frames[restype, 2, :3, 3], pos["N"], atol=1e-6)
        np.testing.assert_allclose(frames[restype, 3, :3, 3], pos["C"], atol=1e-6)
        for chi, atoms in enumerate(rc.chi_angles_atoms[resname]):
            # chi1's axis end (CB) is given in the backbone frame; later axis ends in
            # the previous chi frame.
            np.testing.assert_allclose(frames[restype, 4 + chi, :3, 3], pos[atoms[2]], atol=1e-6)


def test_ambiguity_tables():
    swap = rc.restype_atom14_ambiguous_atoms_swap_idx
    assert swap.shape == (21, 14)
    np.testing.assert_array_equal(swap[np.arange(21)[:, None], swap], np.tile(np.arange(14), [21, 1]))  # an involution
    asp = rc.restype_order["D"]
    assert swap[asp, 6] == 7 and swap[asp, 7] == 6
    assert rc.restype_atom14_is_ambiguous[asp].tolist() == [0] * 6 + [1, 1] + [0] * 6
    phe = rc.restype_order["F"]
    assert rc.restype_atom14_is_ambiguous[phe].sum() == 4
    assert rc.restype_atom14_is_ambiguous.sum() == 2 + 2 + 4 + 4
    eye = np.eye(14, dtype=np.float32)
    for restype in range(21):
        np.testing.assert_array_equal(rc.restype_atom14_renaming_matrices[restype], eye[swap[restype]])
    assert rc.restype_rigidgroup_is_ambiguous.sum() == 4
    glu = rc.restype_order["E"]
    assert rc.restype_rigidgroup_is_ambiguous[glu, 6] == 1
    np.testing.assert_array_equal(rc.restype_rigidgroup_ambiguity_rot[glu, 6], np.diag([1.0, -1.0, -1.0]))


# ---------------------------------------------------------------------------------------
# Stereochemistry.
# ---------------------------------------------------------------------------------------


def test_stereo_chemical_props_data_file_ships_with_module():
    assert rc.STEREO_CHEMICAL_PROPS_PATH.is_file()
    assert rc.STEREO_CHEMICAL_PROPS_PATH.parent.name == "common"


def test_load_stereo_chemical_props():
    bonds, virtual_bonds, angles = rc.load_stereo_chemical_props()
    assert set(bonds) == set(rc.resnames)
    assert bonds["UNK"] == [] and angles["UNK"] == [] and virtual_bonds["UNK"] == []
    assert sum(len(v) for v in bonds.values()) == 153
    assert sum(len(v) for v in angles.values()) == 174
    ca_cb = [b for b in bonds["ALA"] if {b.atom1_name, b.atom2_name} == {"CA", "CB"}]
    assert ca_cb[0].length == 1.520 and ca_cb[0].stddev == 0.021
    # Every bond names atoms the residue has.
    for resname, blist in bonds.items():
        for b in blist:
            assert {b.atom1_name, b.atom2_name} <= set(rc.residue_atoms.get(resname, []))
    # Virtual bond = law of cosines over the two bonds of the angle.
    n_ca_cb = next(a for a in angles["ALA"] if (a.atom1_name, a.atom3name) == ("N", "CB"))
    assert n_ca_cb.angle_rad == pytest.approx(np.deg2rad(110.1))
    vb = next(b for b in virtual_bonds["ALA"] if (b.atom1_name, b.atom2_name) == ("N", "CB"))
    a, c = 1.459, 1.520
    assert vb.length == pytest.approx(np.sqrt(a * a + c * c - 2 * a * c * np.cos(np.deg2rad(110.1))))
    assert 0 < vb.stddev < 0.1


def test_between_residue_constants():
    assert rc.between_res_bond_length_c_n == [1.329, 1.341]
    assert rc.between_res_bond_length_stddev_c_n == [0.014, 0.016]
    assert np.degrees(np.arccos(rc.between_res_cos_angles_c_n_ca[0])) == pytest.approx(121.352, abs=1e-2)
    assert np.degrees(np.arccos(rc.between_res_cos_angles_ca_c_n[0])) == pytest.approx(116.568, abs=1e-2)


def test_make_atom14_dists_bounds():
    bounds = rc.make_atom14_dists_bounds()
    for key in ("lower_bound", "upper_bound", "stddev"):
        assert bounds[key].shape == (21, 14, 14) and bounds[key].dtype == np.float32
        np.testing.assert_array_equal(bounds[key], np.swapaxes(bounds[key], 1, 2))
    ala = rc.restype_order["A"]
    ca, cb, o = 1, 4, 3
    assert bounds["lower_bound"][ala, ca, cb] == pytest.approx(1.520 - 15 * 0.021)
    assert bounds["upper_bound"][ala, ca, cb] == pytest.approx(1.520 + 15 * 0.021)
    assert bounds["stddev"][ala, ca, cb] == pytest.approx(0.021)
    # CB and O are not bonded: van der Waals lower bound, no upper bound.
    assert bounds["lower_bound"][ala, cb, o] == pytest.approx(1.7 + 1.52 - 1.5)
    assert bounds["upper_bound"][ala, cb, o] == pytest.approx(1e10)
    exists = rc.restype_atom14_mask
    pair = exists[:, :, None] * exists[:, None, :] * (1 - np.eye(14))
    assert (bounds["upper_bound"][pair > 0] > bounds["lower_bound"][pair > 0]).all()
    assert not bounds["upper_bound"][pair == 0].any()
    tight = rc.make_atom14_dists_bounds(overlap_tolerance=0.5, bond_length_tolerance_factor=1)
    assert tight["lower_bound"][ala, cb, o] == pytest.approx(1.7 + 1.52 - 0.5)


def test_van_der_waals_radii_cover_all_elements():
    elements = {name[0] for name in rc.atom_types}
    assert elements == set(rc.van_der_waals_radius)
