"""Tests for jaxfold.common.protein on real PDB/mmCIF files from shared/data."""

import csv
import gzip
import io
import shutil

import numpy as np
import pytest
from Bio.PDB.MMCIF2Dict import MMCIF2Dict
from Bio.PDB.MMCIFParser import MMCIFParser

from jaxfold.common import protein, residue_constants

CA = residue_constants.atom_order["CA"]
SD = residue_constants.atom_order["SD"]
MET = residue_constants.restype_order["M"]
UNK = residue_constants.unk_restype_index


@pytest.fixture(scope="module")
def structures(shared_dir):
    path = shared_dir / "data" / "structures"
    if not path.is_dir():
        pytest.skip(f"no structures folder at {path}")
    return path


_CACHE = {}


def load(structures, rel, **kwargs):
    """Parses a shared structure once per test session (parsing is the slow part)."""
    key = (rel, tuple(sorted(kwargs.items())))
    if key not in _CACHE:
        _CACHE[key] = protein.from_file(structures / rel, **kwargs)
    return _CACHE[key]


def chain_counts(prot):
    counts = {}
    for c in prot.chain_index:
        cid = prot.chain_ids[c]
        counts[cid] = counts.get(cid, 0) + 1
    return counts


def assert_same_protein(a, b, atol=1e-3):
    """Exact masks/aatypes/numbering, coordinates and B-factors to file precision."""
    assert a.chain_ids == b.chain_ids
    np.testing.assert_array_equal(a.aatype, b.aatype)
    np.testing.assert_array_equal(a.residue_index, b.residue_index)
    np.testing.assert_array_equal(a.chain_index, b.chain_index)
    np.testing.assert_array_equal(a.atom_mask, b.atom_mask)
    present = a.atom_mask > 0
    np.testing.assert_allclose(a.atom_positions[present], b.atom_positions[present], atol=atol, rtol=0)
    np.testing.assert_allclose(a.b_factors[present], b.b_factors[present], atol=5e-3, rtol=0)
    codes = lambda p: None if p.insertion_codes is None else list(p.insertion_codes)
    assert codes(a) == codes(b)


def cif_rows(path, *fields):
    d = MMCIF2Dict(str(path))
    return list(zip(*(d[f] for f in fields)))


# --------------------------------------------------------------------------
# Parsing real files
# --------------------------------------------------------------------------


def test_ubiquitin_pdb_and_mmcif_parses_agree(structures):
    a = load(structures, "pdb/1ubq.pdb")
    b = load(structures, "mmcif/1ubq.cif")
    assert a.num_res == 76 and a.chain_ids == ("A",)
    assert_same_protein(a, b, atol=0)
    seq = "".join(residue_constants.restypes_with_x[i] for i in a.aatype)
    assert seq == "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
    np.testing.assert_array_equal(a.residue_index, np.arange(1, 77))


@pytest.mark.parametrize(
    "rel",
    [
        "pdb/1ubq.pdb",
        "pdb/2rbg.pdb",
        "pdb/1bhl.pdb",
        "pdb/1orc.pdb",
        "pdb/1ycr.pdb",
        "pdb/1ejg.pdb",
        "mmcif/2q2k.cif",
        "mmcif/5kc1.cif",
        "mmcif/102m.cif",
        "mmcif/3u8v.cif",
        "mmcif/7zzx.cif",
        "mmcif/1k6p.cif",
        "mmcif/4zey.cif",
    ],
)
def test_residue_counts_match_structures_tsv(structures, rel):
    # structures.tsv counts first-model polymer residues per author chain.
    with open(structures / "structures.tsv") as f:
        row = next(r for r in csv.DictReader(f, delimiter="\t") if r["file"].endswith(rel))
    expected = {}
    for token in row["chain_residues"].split():
        if ":" in token:
            chain, rest = token.split(":")
            expected[chain] = int(rest.split("/")[0])
    prot = load(structures, rel)
    assert chain_counts(prot) == expected
    assert set(prot.chain_ids) == set(expected)


def test_multichain_missing_residues_keep_author_numbering(structures):
    path = structures / "mmcif/2q2k.cif"
    prot = load(structures, "mmcif/2q2k.cif")
    # Chain F is DNA (with 5-iodouracil HETATMs): not protein.
    assert prot.chain_ids == ("A", "B")
    # Independent truth: observed residues of _pdbx_poly_seq_scheme, author numbering.
    rows = cif_rows(
        path,
        "_pdbx_poly_seq_scheme.pdb_strand_id",
        "_pdbx_poly_seq_scheme.auth_seq_num",
        "_pdbx_poly_seq_scheme.pdb_mon_id",
    )
    for k, chain in enumerate(prot.chain_ids):
        scheme = [(n, m) for s, n, m in rows if s == chain]
        observed = [(int(n), m) for n, m in scheme if n != "?"]
        assert len(scheme) == 70 and len(observed) < 70  # the His-tag region is unobserved
        sel = prot.chain_index == k
        np.testing.assert_array_equal(prot.residue_index[sel], [n for n, _ in observed])
        names = [residue_constants.resnames[a] for a in prot.aatype[sel]]
        assert names == [m for _, m in observed]


def test_chain_selection_and_absent_chain(structures):
    text = (structures / "mmcif/2q2k.cif").read_text()
    only_b = protein.from_mmcif_string(text, chain_id="B")
    assert only_b.chain_ids == ("B",) and only_b.num_res == 44
    full = load(structures, "mmcif/2q2k.cif")
    np.testing.assert_array_equal(only_b.atom_positions, full.atom_positions[full.chain_index == 1])
    with pytest.raises(ValueError, match=r"chain 'Z' not found.*'A'.*'B'"):
        protein.from_mmcif_string(text, chain_id="Z")
    with pytest.raises(ValueError, match="chain 'F' has no protein residues"):
        protein.from_mmcif_string(text, chain_id="F")


def test_author_chain_ids_from_mmcif(structures):
    # 7zzx: the only chain is author chain B (label asym id A).
    prot = load(structures, "mmcif/7zzx.cif")
    assert prot.chain_ids == ("B",)


def test_hetero_residues_and_waters_skipped(structures, shared_dir):
    prot = load(structures, "mmcif/102m.cif")  # myoglobin + haem, sulphates, waters
    assert prot.chain_ids == ("A",) and prot.num_res == 154
    assert np.all(prot.aatype < 20)
    fasta = (shared_dir / "data/seqs/structures_seqres.fasta").read_text().split(">")
    entry = next(e for e in fasta if e.startswith("102m_A"))
    seqres = "".join(entry.splitlines()[1:])
    assert "".join(residue_constants.restypes[i] for i in prot.aatype) == seqres
    # Author numbering of 102m starts at 0; the haem (154) and waters would
    # follow the last residue.
    np.testing.assert_array_equal(prot.residue_index, np.arange(154))


def test_selenomethionine_read_as_methionine(structures):
    # mmCIF: 4zey has MSE at author residues 4, 45, 65 (HETATM records).
    prot = load(structures, "mmcif/4zey.cif")
    rows = cif_rows(
        structures / "mmcif/4zey.cif",
        "_atom_site.label_comp_id",
        "_atom_site.label_atom_id",
        "_atom_site.auth_seq_id",
        "_atom_site.Cartn_x",
        "_atom_site.Cartn_y",
        "_atom_site.Cartn_z",
    )
    se = {int(n): np.array([x, y, z], float) for c, a, n, x, y, z in rows if c == "MSE" and a == "SE"}
    assert sorted(se) == [4, 45, 65]
    for resnum, xyz in se.items():
        i = int(np.flatnonzero(prot.residue_index == resnum)[0])
        assert prot.aatype[i] == MET and prot.atom_mask[i, SD] == 1
        np.testing.assert_allclose(prot.atom_positions[i, SD], xyz, atol=1e-3)
    # PDB: 2rbg has MSE 102 in both chains.
    prot = load(structures, "pdb/2rbg.pdb")
    at = prot.residue_index == 102
    assert at.sum() == 2 and np.all(prot.aatype[at] == MET) and np.all(prot.atom_mask[at, SD] == 1)


def test_modified_residue_becomes_unk(structures):
    # 1bhl: cacodylated cysteines (CAS, HETATM + MODRES) at 65 and 130 stay in
    # the chain as UNK with their atom37 atoms; the arsenic is dropped.
    prot = load(structures, "pdb/1bhl.pdb")
    for resnum in (65, 130):
        i = int(np.flatnonzero(prot.residue_index == resnum)[0])
        assert prot.aatype[i] == UNK
        for name in ("N", "CA", "C", "O", "CB", "SG"):
            assert prot.atom_mask[i, residue_constants.atom_order[name]] == 1
        assert prot.atom_mask[i].sum() == 8  # + CE1, CE2 (atom37 names); not AS
    assert np.sum(prot.aatype == UNK) == 2


def _expected_altloc_choice(path):
    """Highest-occupancy altloc per atom (first on ties), from the raw mmCIF rows."""
    rows = cif_rows(
        path,
        "_atom_site.pdbx_PDB_model_num",
        "_atom_site.auth_asym_id",
        "_atom_site.auth_seq_id",
        "_atom_site.label_atom_id",
        "_atom_site.label_alt_id",
        "_atom_site.occupancy",
        "_atom_site.Cartn_x",
        "_atom_site.Cartn_y",
        "_atom_site.Cartn_z",
        "_atom_site.group_PDB",
    )
    best = {}
    for model, chain, seq, atom, alt, occ, x, y, z, group in rows:
        if model != "1" or group != "ATOM":
            continue
        key = (chain, int(seq), atom)
        occ = float(occ)
        if key not in best or occ > best[key][0]:
            best[key] = (occ, np.array([x, y, z], float), alt)
    return best


@pytest.mark.parametrize("rel", ["mmcif/3u8v.cif", "mmcif/3bkr.cif"])
def test_altlocs_take_highest_occupancy(structures, rel):
    prot = load(structures, rel)
    best = _expected_altloc_choice(structures / rel)
    n_checked = n_alt = 0
    for (chain, seq, atom), (occ, xyz, alt) in best.items():
        slot = residue_constants.atom_order.get(atom)
        if slot is None or chain not in prot.chain_ids:
            continue
        i = np.flatnonzero((prot.residue_index == seq) & (prot.chain_index == prot.chain_ids.index(chain)))
        if len(i) == 0:
            continue
        np.testing.assert_allclose(prot.atom_positions[i[0], slot], xyz, atol=1e-3)
        n_checked += 1
        n_alt += alt not in (".", "?")
    assert n_checked > 500 and n_alt >= 10


def test_microheterogeneity_picks_major_residue_type(structures):
    # 1ejg (crambin, 0.54 A): residue 22 is PRO (shared N + altloc A) or SER
    # (altlocs B, C); PRO has the higher mean occupancy and keeps its N.
    prot = load(structures, "pdb/1ejg.pdb")
    i = int(np.flatnonzero(prot.residue_index == 22)[0])
    assert residue_constants.resnames[prot.aatype[i]] == "PRO"
    assert prot.atom_mask[i, residue_constants.atom_order["N"]] == 1
    assert prot.atom_mask[i, residue_constants.atom_order["CD"]] == 1


def test_hydrogens_ignored_and_atoms_valid(structures):
    for rel in ("pdb/1ejg.pdb", "mmcif/5pti.cif", "pdb/6mrr.pdb"):  # all carry H (5pti also D)
        prot = load(structures, rel)
        allowed = residue_constants.restype_atom37_mask[prot.aatype].copy()
        allowed[:, residue_constants.atom_order["OXT"]] = 1
        assert np.all(prot.atom_mask <= allowed), rel
        assert np.all(prot.atom_mask[:, CA] == 1), rel


def test_nmr_model_selection(structures):
    # 1psm: 20 NMR models.  Model index 19 must be the file's model 20, atom
    # for atom, and differ from model 1.
    last = load(structures, "mmcif/1psm.cif", model=19)
    rows = cif_rows(
        structures / "mmcif/1psm.cif",
        "_atom_site.pdbx_PDB_model_num",
        "_atom_site.label_atom_id",
        "_atom_site.auth_seq_id",
        "_atom_site.Cartn_x",
        "_atom_site.Cartn_y",
        "_atom_site.Cartn_z",
    )
    ca = {(m, int(s)): np.array([x, y, z], float) for m, a, s, x, y, z in rows if a == "CA"}
    want_20 = np.stack([ca[("20", int(r))] for r in last.residue_index])
    want_1 = np.stack([ca[("1", int(r))] for r in last.residue_index])
    assert last.num_res == 38
    np.testing.assert_allclose(last.atom_positions[:, CA], want_20, atol=1e-3)
    assert np.abs(want_1 - want_20).max() > 0.5
    for bad in (1, -1):
        with pytest.raises(ValueError, match=rf"1ubq\.pdb: model index {bad} out of range; the file has 1 model"):
            protein.from_file(structures / "pdb/1ubq.pdb", model=bad)


# --------------------------------------------------------------------------
# Malformed input
# --------------------------------------------------------------------------


def test_malformed_input_raises_value_error(structures, tmp_path):
    for parse in (protein.from_pdb_string, protein.from_mmcif_string):
        with pytest.raises(ValueError, match="empty"):
            parse("")
        with pytest.raises(ValueError, match="empty"):
            parse("  \n\n")
    waters = "".join(
        line + "\n" for line in (structures / "pdb/1ubq.pdb").read_text().splitlines() if line.startswith("HETATM")
    )
    with pytest.raises(ValueError, match="no protein residues"):
        protein.from_pdb_string(waters)
    with pytest.raises(ValueError, match="mmCIF"):
        protein.from_mmcif_string("data_x\n_cell.length_a 10\n")
    with pytest.raises(ValueError, match="no atom records"):
        protein.from_pdb_string("not a structure\n")
    cif_text = (structures / "mmcif/1ubq.cif").read_text()
    with pytest.raises(ValueError, match="could not parse PDB text"):
        protein.from_pdb_string(cif_text)  # mmCIF handed to the PDB reader
    with pytest.raises(ValueError, match="could not parse mmCIF text"):
        protein.from_mmcif_string((structures / "pdb/1ubq.pdb").read_text())
    with pytest.raises(ValueError, match="chain 'Q' not found.*'A'"):
        protein.from_file(structures / "pdb/1ubq.pdb", chain_id="Q")

    empty = tmp_path / "empty.pdb"
    empty.write_text("")
    with pytest.raises(ValueError, match=r"empty\.pdb: empty file"):
        protein.from_file(empty)
    with pytest.raises(ValueError, match="unknown structure file suffix"):
        protein.from_file(tmp_path / "x.xyz")
    with pytest.raises(ValueError, match="could not read"):
        protein.from_file(tmp_path / "missing.cif")


def test_from_file_gzip_and_suffixes(structures, tmp_path):
    ref = load(structures, "mmcif/1ubq.cif")
    for src, name in (("pdb/1ubq.pdb", "1ubq.ent.gz"), ("mmcif/1ubq.cif", "1UBQ.mmcif.gz")):
        with open(structures / src, "rb") as fin, gzip.open(tmp_path / name, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        assert_same_protein(protein.from_file(tmp_path / name), ref, atol=0)
    shutil.copy(structures / "pdb/1ubq.pdb", tmp_path / "u.ent")
    assert_same_protein(protein.from_file(str(tmp_path / "u.ent")), ref, atol=0)


# --------------------------------------------------------------------------
# Writing and round trips
# --------------------------------------------------------------------------


@pytest.mark.parametrize("rel", ["pdb/1ubq.pdb", "pdb/2rbg.pdb", "pdb/1orc.pdb", "mmcif/2q2k.cif", "mmcif/1dix.cif"])
def test_pdb_round_trip(structures, rel):
    prot = load(structures, rel)
    text = protein.to_pdb(prot)
    back = protein.from_pdb_string(text)
    assert_same_protein(prot, back)
    assert_same_protein(back, protein.from_pdb_string(protein.to_pdb(back)), atol=0)


@pytest.mark.parametrize("rel", ["mmcif/2q2k.cif", "mmcif/5kc1.cif", "mmcif/1dix.cif", "pdb/1ubq.pdb", "pdb/1orc.pdb"])
def test_mmcif_round_trip(structures, rel):
    prot = load(structures, rel)
    back = protein.from_mmcif_string(protein.to_mmcif(prot, name="rt test"))
    assert_same_protein(prot, back)


def test_insertion_codes_survive(structures):
    prot = load(structures, "pdb/1orc.pdb")
    assert prot.insertion_codes is not None
    coded = [(int(r), c) for r, c in zip(prot.residue_index, prot.insertion_codes) if c]
    assert coded  # 1orc is an insertion mutant: 56A, 56B, ...
    text = protein.to_pdb(prot)
    r, c = coded[0]
    assert any(line.startswith("ATOM") and line[22:26] == f"{r:>4}" and line[26] == c for line in text.splitlines())


def test_pdb_columns_match_original_file(structures):
    original = {}
    for line in (structures / "pdb/1ubq.pdb").read_text().splitlines():
        if line.startswith("ATOM"):
            original[(line[12:16], int(line[22:26]))] = line
    written = [l for l in protein.to_pdb(load(structures, "pdb/1ubq.pdb")).splitlines() if l.startswith("ATOM")]
    assert len(written) == len(original) == 602
    for line in written:
        assert len(line) == 80 and line[54:60] == "  1.00"  # occupancy is always written as 1
        ref = original[(line[12:16], int(line[22:26]))]
        for lo, hi in ((12, 16), (17, 20), (21, 22), (22, 27), (30, 54), (60, 66), (76, 78)):
            assert line[lo:hi] == ref[lo:hi], (line, ref)


def test_pdb_ter_per_chain_and_end(structures):
    prot = load(structures, "pdb/2rbg.pdb")
    lines = protein.to_pdb(prot).splitlines()
    assert lines[-1] == "END".ljust(80)
    ter = [k for k, l in enumerate(lines) if l.startswith("TER")]
    assert len(ter) == 2
    for k in ter:
        prev = lines[k - 1]
        assert prev.startswith("ATOM")
        assert lines[k][17:27] == prev[17:27]  # residue name, chain, number
        assert int(lines[k][6:11]) == int(prev[6:11]) + 1
    assert lines[ter[0] - 1][21] == "A" and lines[ter[0] + 1][21] == "B"


def test_pdb_atom_name_alignment():
    assert protein._pdb_atom_name("N", "N") == " N  "
    assert protein._pdb_atom_name("CA", "C") == " CA "
    assert protein._pdb_atom_name("OXT", "O") == " OXT"
    assert protein._pdb_atom_name("HD21", "H") == "HD21"
    assert protein._pdb_atom_name("FE", "FE") == "FE  "
    with pytest.raises(ValueError):
        protein._pdb_atom_name("TOOLONG", "C")


def test_chain_ids_must_be_single_characters_in_pdb(structures):
    p = load(structures, "pdb/1ubq.pdb")
    renamed = protein.Protein(
        atom_positions=p.atom_positions,
        atom_mask=p.atom_mask,
        aatype=p.aatype,
        residue_index=p.residue_index,
        chain_index=p.chain_index,
        chain_ids=("AB",),
        b_factors=p.b_factors,
    )
    with pytest.raises(ValueError, match="single characters.*'AB'"):
        protein.to_pdb(renamed)
    back = protein.from_mmcif_string(protein.to_mmcif(renamed))
    assert back.chain_ids == ("AB",)
    assert_same_protein(renamed, back)


def test_mmcif_output_fields(structures):
    prot = load(structures, "mmcif/2q2k.cif")
    text = protein.to_mmcif(prot, name="my model")
    assert text.startswith("data_my_model\n")
    d = MMCIF2Dict(io.StringIO(text))
    columns = [key for key in d if key.startswith("_atom_site.")]
    assert len(columns) > 10 and all(len(d[key]) == len(d["_atom_site.id"]) for key in columns)
    assert d["_struct_asym.id"] == ["A", "B"]
    assert len(d["_entity_poly_seq.mon_id"]) == 45 + 44
    assert all(len(x.split(".")[1]) == 3 for x in d["_atom_site.Cartn_x"][:50])

    # An independent reader (Biopython's MMCIFParser, which needs the atom_site columns it reads) finds
    # every present atom at its chain, author residue number and name, with its coordinates and B-factor.
    parsed = {
        (atom.get_parent().get_parent().id, atom.get_parent().id[1], atom.get_id()): atom
        for atom in MMCIFParser(QUIET=True).get_structure("x", io.StringIO(text)).get_atoms()
    }
    assert len(parsed) == int(prot.atom_mask.sum())
    for i, slot in zip(*np.nonzero(prot.atom_mask)):
        chain = prot.chain_ids[prot.chain_index[i]]
        atom = parsed[(chain, int(prot.residue_index[i]), residue_constants.atom_types[slot])]
        np.testing.assert_allclose(atom.coord, prot.atom_positions[i, slot], atol=1e-3, rtol=0)
        assert atom.get_bfactor() == pytest.approx(prot.b_factors[i, slot], abs=5e-3)
        assert atom.get_parent().get_resname() == residue_constants.resnames[prot.aatype[i]]


def test_from_prediction_puts_plddt_in_b_factors(structures):
    p = load(structures, "pdb/2rbg.pdb")
    plddt = np.linspace(10.0, 99.5, p.num_res)
    pred = protein.from_prediction(
        aatype=p.aatype,
        final_atom_positions=p.atom_positions,
        final_atom_mask=p.atom_mask,
        residue_index=p.residue_index,
        plddt=plddt,
        chain_index=p.chain_index,
    )
    assert pred.chain_ids == ("A", "B")
    np.testing.assert_allclose(pred.b_factors, np.repeat(plddt[:, None], 37, axis=1), atol=1e-5)
    for back in (protein.from_pdb_string(protein.to_pdb(pred)), protein.from_mmcif_string(protein.to_mmcif(pred))):
        assert_same_protein(pred, back)
        per_res = back.b_factors[:, CA]
        np.testing.assert_allclose(per_res, plddt, atol=5e-3)
        # Every present atom of a residue carries that residue's pLDDT.
        present = back.atom_mask > 0
        np.testing.assert_allclose(back.b_factors[present], np.broadcast_to(per_res[:, None], present.shape)[present])
    # Defaults: one chain 'A', zero B-factors; jax arrays are accepted.
    import jax.numpy as jnp

    single = protein.from_prediction(
        jnp.asarray(p.aatype), jnp.asarray(p.atom_positions), jnp.asarray(p.atom_mask), jnp.asarray(p.residue_index)
    )
    assert single.chain_ids == ("A",) and not single.b_factors.any()


def test_protein_validates_shapes(structures):
    p = load(structures, "pdb/1ubq.pdb")
    fields = dict(
        atom_positions=p.atom_positions,
        atom_mask=p.atom_mask,
        aatype=p.aatype,
        residue_index=p.residue_index,
        chain_index=p.chain_index,
        chain_ids=p.chain_ids,
        b_factors=p.b_factors,
    )
    protein.Protein(**fields)
    bad = {
        "atom_positions": (p.atom_positions[:, :14], r"atom_positions must have shape \(76, 37, 3\)"),
        "atom_mask": (p.atom_mask[:-1], "atom_mask must have shape"),
        "b_factors": (p.b_factors[:, 0], "b_factors must have shape"),
        "residue_index": (p.residue_index[:, None], "residue_index must have shape"),
        "aatype": (np.where(np.arange(76) == 5, 21, p.aatype), r"aatype values must lie in \[0, 20\]"),
        "chain_index": (p.chain_index + 1, "chain_index values must index chain_ids"),
        "chain_ids": (("A", "A"), "chain_ids must be unique"),
    }
    for name, (value, message) in bad.items():
        with pytest.raises(ValueError, match=message):
            protein.Protein(**{**fields, name: value})
    with pytest.raises(ValueError, match="insertion_codes must have shape"):
        protein.Protein(**fields, insertion_codes=np.array(["", "A"]))
    with pytest.raises(dataclasses_frozen_error()):
        p.aatype = None


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


def test_pdb_output_parses_in_biopython_without_warnings(structures):
    """Every record is padded to 80 columns: Biopython reads the END record (columns 1-6) without its
    'Ignoring unrecognized record' warning, and gets every atom back."""
    import io
    import warnings

    from Bio.PDB import PDBParser

    prot = load(structures, "pdb/2rbg.pdb")
    text = protein.to_pdb(prot)
    assert all(len(line) == 80 for line in text.splitlines() if line.startswith(("ATOM", "TER", "END")))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        structure = PDBParser().get_structure("x", io.StringIO(text))
    assert not [str(w.message) for w in caught]
    assert sum(1 for _ in structure.get_atoms()) == int((prot.atom_mask > 0.5).sum())
