"""Tests for jaxfold.data.mmcif and jaxfold.data.templates (AlphaFold2 template featurisation)."""

from __future__ import annotations

import random
import shutil
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from Bio.Align import substitution_matrices

from jaxfold.common import residue_constants as rc
from jaxfold.data import mmcif, templates
from jaxfold.data.parsers import TemplateHit, parse_hhr, parse_hmmsearch_sto

UBQ_1_37 = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIP"


@pytest.fixture(scope="module")
def mmcif_dir(shared_dir) -> Path:
    return shared_dir / "data" / "structures" / "mmcif"


def _tsv_rows(shared_dir):
    lines = (shared_dir / "data" / "structures" / "structures.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    return {row["file"]: row for row in (dict(zip(header, l.split("\t"))) for l in lines[1:])}


def _expected_counts(chain_residues: str):
    """'A:45/70 (-25) B:44/70 (-26)' -> {'A': (45, 70), 'B': (44, 70)}."""
    out = {}
    for token in chain_residues.split():
        if ":" in token:
            chain, counts = token.split(":")
            observed, seqres = counts.split("/")
            out[chain] = (int(observed), int(seqres))
    return out


def _hit(name, query, hit_sequence, indices_query, indices_hit, sum_probs=10.0, index=1, aligned_cols=None):
    if aligned_cols is None:
        aligned_cols = sum(q >= 0 and h >= 0 for q, h in zip(indices_query, indices_hit))
    return TemplateHit(
        index=index,
        name=name,
        aligned_cols=aligned_cols,
        sum_probs=sum_probs,
        query=query,
        hit_sequence=hit_sequence,
        indices_query=list(indices_query),
        indices_hit=list(indices_hit),
    )


def _ungapped_hit(name, query_sequence, template_seqres, q_start, t_start, length, **kw):
    """A gap-free hit aligning query[q_start:+length] to template[t_start:+length]."""
    return _hit(
        name,
        query_sequence[q_start : q_start + length],
        template_seqres[t_start : t_start + length],
        range(q_start, q_start + length),
        range(t_start, t_start + length),
        **kw,
    )


# ---------------------------------------------------------------------------------------------
# (a) mmCIF parsing.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pdb_id", ["5kc1", "2q2k", "1psm", "4zey", "3u8v"])
def test_parse_counts_match_structures_tsv(shared_dir, mmcif_dir, pdb_id):
    row = _tsv_rows(shared_dir)[f"structures/mmcif/{pdb_id}.cif"]
    obj = mmcif.parse_mmcif_file(mmcif_dir / f"{pdb_id}.cif")
    expected = _expected_counts(row["chain_residues"])
    got = {c: (obj.num_observed(c), len(s)) for c, s in obj.chain_to_seqres.items()}
    assert got == expected
    assert obj.structure_method == row["method"].lower()
    assert obj.resolution == pytest.approx(float(row["resolution"]) if row["resolution"] else 0.0)
    # SEQRES agrees with the shared FASTA of every chain.
    fasta = (shared_dir / "data" / "seqs" / "structures_seqres.fasta").read_text().split(">")
    seqs = {e.split()[0]: "".join(e.splitlines()[1:]) for e in fasta if e.strip()}
    for chain, seq in obj.chain_to_seqres.items():
        assert seq == seqs[f"{pdb_id}_{chain}"]


def test_parse_5kc1_multichain_and_missing_residues(mmcif_dir):
    obj = mmcif.parse_mmcif_file(mmcif_dir / "5kc1.cif")
    assert obj.release_date == "2016-10-05"
    assert len(obj.chain_ids) == 12
    # From structures.tsv: chain C observed only outside 1-118 and 152-226 (1-based).
    mapping = obj.seqres_to_structure["C"]
    observed = [i for i in range(226) if not mapping[i].is_missing]
    assert observed == list(range(118, 151))
    pos, mask = obj.get_atom_positions("C")
    assert pos.shape == (226, 37, 3) and mask.shape == (226, 37)
    assert mask[:118].sum() == 0 and mask[151:].sum() == 0
    assert np.all(mask[118:151, rc.atom_order["CA"]] == 1)
    first = mapping[118]
    assert first.position.chain_id == "C" and first.hetflag == " "
    assert first.position.insertion_code == " "


def test_parse_2q2k_gaps_and_author_numbering(mmcif_dir):
    obj = mmcif.parse_mmcif_file(mmcif_dir / "2q2k.cif")
    for chain, missing in (("A", list(range(0, 22)) + [67, 68, 69]), ("B", list(range(0, 22)) + [66, 67, 68, 69])):
        m = obj.seqres_to_structure[chain]
        assert [i for i in range(70) if m[i].is_missing] == missing
        assert m[0].position is None and m[0].name == "MET"
    assert obj.release_date == "2008-02-05"


def test_parse_1psm_nmr_first_model_only(mmcif_dir):
    obj = mmcif.parse_mmcif_file(mmcif_dir / "1psm.cif")
    assert obj.structure_method == "solution nmr"
    assert obj.resolution == 0.0
    assert obj.release_date == "1995-02-07"  # earliest of the revision dates
    assert obj.structure.id == 0  # Biopython's first model
    pos, mask = obj.get_atom_positions("A")
    assert mask.sum() > 0
    # Hydrogens are not atom37 names: only heavy atoms land in the mask.
    assert mask.sum(-1).max() <= 14


def test_parse_mse_maps_to_met_and_se_to_sd(mmcif_dir):
    obj = mmcif.parse_mmcif_file(mmcif_dir / "4zey.cif")
    seq = obj.chain_to_seqres["A"]
    assert seq[1] == "M"  # MSE at label_seq 2
    res = obj.seqres_to_structure["A"][1]
    assert res.name == "MSE" and res.hetflag == "H_MSE"
    pos, mask = obj.get_atom_positions("A")
    sd = rc.atom_order["SD"]
    assert mask[1, sd] == 1
    se_line = next(
        l
        for l in (mmcif_dir / "4zey.cif").read_text().splitlines()
        if l.startswith("HETATM") and l.split()[3] == "SE" and l.split()[8] == "2"
    )
    np.testing.assert_allclose(pos[1, sd], [float(x) for x in se_line.split()[10:13]], atol=1e-4)


def test_altloc_choice_follows_biopython_highest_occupancy(mmcif_dir):
    # 3o5r MET 48 (label_seq 36): altloc A occupancy 0.25, B 0.75. AlphaFold reads atoms through
    # Biopython, which keeps the highest-occupancy altloc (first one on ties).
    obj = mmcif.parse_mmcif_file(mmcif_dir / "3o5r.cif")
    pos, _ = obj.get_atom_positions("A")
    np.testing.assert_allclose(pos[35, rc.atom_order["CA"]], [61.644, 21.720, 2.897], atol=1e-4)
    # 4zey LYS 66 (label_seq 64): A and B both 0.50 -> A.
    obj = mmcif.parse_mmcif_file(mmcif_dir / "4zey.cif")
    pos, _ = obj.get_atom_positions("A")
    np.testing.assert_allclose(pos[63, rc.atom_order["CG"]], [2.963, -3.721, -3.017], atol=1e-4)


def test_author_chain_differs_from_label_chain(mmcif_dir):
    obj = mmcif.parse_mmcif_file(mmcif_dir / "7zzx.cif")
    assert obj.chain_ids == ["B"]
    assert obj.num_observed("B") == 202 and len(obj.chain_to_seqres["B"]) == 204


def test_seqres_one_letter_modified_residues():
    assert mmcif.seqres_one_letter("MSE") == "M"
    assert mmcif.seqres_one_letter("ALA") == "A"
    assert mmcif.seqres_one_letter("MLY") == "K"
    assert mmcif.seqres_one_letter("ZZZ") == "X"


# ---------------------------------------------------------------------------------------------
# (d) Malformed mmCIF.
# ---------------------------------------------------------------------------------------------


def test_malformed_mmcif_raises_clear_errors(tmp_path, mmcif_dir):
    empty = tmp_path / "empt.cif"
    empty.write_text("")
    with pytest.raises(mmcif.MmcifParseError, match="empt.cif.*empty"):
        mmcif.parse_mmcif_file(empty)

    garbage = tmp_path / "garb.cif"
    garbage.write_text("this is not an mmCIF file\nat all\n")
    with pytest.raises(ValueError, match="garb.cif"):
        mmcif.parse_mmcif_file(garbage)

    text = (mmcif_dir / "1ubq.cif").read_text()
    truncated = tmp_path / "trnc.cif"
    lines = text.splitlines()
    cut = next(i for i, l in enumerate(lines) if l.startswith("ATOM")) + 5
    # Cut the atom_site loop mid-row: the loop no longer has a whole number of rows.
    truncated.write_text("\n".join(lines[:cut]) + "\nATOM 99 N N . MET A\n")
    with pytest.raises(mmcif.MmcifParseError, match="trnc.cif"):
        mmcif.parse_mmcif_file(truncated)

    no_atoms = tmp_path / "noat.cif"
    no_atoms.write_text("\n".join(l for l in lines if not l.startswith(("ATOM", "HETATM"))))
    with pytest.raises(mmcif.MmcifParseError, match="noat.cif"):
        mmcif.parse_mmcif_file(no_atoms)

    with pytest.raises(FileNotFoundError):
        mmcif.parse_mmcif_file(tmp_path / "none.cif")
    with pytest.raises(mmcif.MmcifParseError, match="myid"):
        mmcif.parse_mmcif_string("data_x\n_entry.id x\n", file_id="myid")


# ---------------------------------------------------------------------------------------------
# (b) The ubiquitin 1-37 template of DeepMind's reference features.
# ---------------------------------------------------------------------------------------------


def _ubq_reference_hit(seqres):
    # Query positions 0, 1, 34, 35, 36 unaligned; 2..33 aligned to 1UBQ residues 3..34.
    return _ungapped_hit("1UBQ_A mol:protein length:76  UBIQUITIN", UBQ_1_37, seqres, 2, 2, 32, sum_probs=31.5)


def test_ubiquitin_template_matches_deepmind_reference(shared_dir, mmcif_dir, tmp_path):
    import json

    ref = np.load(shared_dir / "reference" / "features_raw.npz")
    manifest = json.loads((shared_dir / "reference" / "manifest.json").read_text())["template"]
    unaligned = [i for i, c in enumerate(str(ref["template_sequence"][0])) if c == "-"]
    assert unaligned == manifest["query_positions_unaligned_0based"] == [0, 1, 34, 35, 36]

    # The reference README: "that residue's template O atom is absent" (ILE 3, the first aligned
    # residue) -- DeepMind's pipeline ran on 1UBQ with that one atom removed. Do the same.
    lines = (mmcif_dir / "1ubq.cif").read_text().splitlines(keepends=True)
    drop = [
        l
        for l in lines
        if l.startswith("ATOM") and l.split()[3] == "O" and l.split()[5] == "ILE" and l.split()[8] == "3"
    ]
    assert len(drop) == 1
    edited = tmp_path / "mmcif"
    edited.mkdir()
    (edited / "1ubq.cif").write_text("".join(l for l in lines if l not in drop))

    seqres = mmcif.parse_mmcif_file(mmcif_dir / "1ubq.cif").chain_to_seqres["A"]
    featurizer = templates.TemplateFeaturizer(edited, "2100-01-01", kalign_binary="")
    result = featurizer.get_templates(UBQ_1_37, [_ubq_reference_hit(seqres)])
    assert not result.errors and not result.warnings
    feats = result.features

    np.testing.assert_array_equal(feats["template_aatype"], ref["template_aatype"])
    np.testing.assert_array_equal(feats["template_all_atom_masks"], ref["template_all_atom_masks"])
    np.testing.assert_allclose(
        feats["template_all_atom_positions"], ref["template_all_atom_positions"], rtol=0, atol=1e-3
    )
    np.testing.assert_allclose(feats["template_sum_probs"], ref["template_sum_probs"])
    assert [s.decode() for s in feats["template_sequence"]] == [str(s) for s in ref["template_sequence"]]
    assert [s.decode() for s in feats["template_domain_names"]] == [str(s) for s in ref["template_domain_names"]]
    for name, dtype in templates.TEMPLATE_FEATURES.items():
        assert feats[name].dtype == dtype, name

    # On the unedited entry the only difference is that O atom.
    full = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01", kalign_binary="")
    masks = full.get_templates(UBQ_1_37, [_ubq_reference_hit(seqres)]).features["template_all_atom_masks"]
    diff = np.argwhere(masks != ref["template_all_atom_masks"])
    assert diff.tolist() == [[0, 2, rc.atom_order["O"]]]


# ---------------------------------------------------------------------------------------------
# (c) Full path: HHsearch hits -> features.
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def openfold_short(shared_dir):
    hhr = (shared_dir / "data" / "msas" / "openfold_short" / "pdb70_hits.hhr").read_text()
    query = "".join((shared_dir / "data" / "seqs" / "openfold_short.fasta").read_text().splitlines()[1:]).strip()
    return query, parse_hhr(hhr, "pdb70_hits.hhr")


def test_full_path_with_date_cutoff(mmcif_dir, openfold_short):
    query, hits = openfold_short
    assert len(hits) == 10
    featurizer = templates.TemplateFeaturizer(mmcif_dir, "2010-01-01", kalign_binary="")
    result = featurizer.get_templates(query, hits)
    f = result.features
    # Released by 2010: 2CRB (2005), 1PSM (1995), 2Q2K (2008), in decreasing sum_probs.
    assert [d.decode() for d in f["template_domain_names"]] == ["2crb_A", "1psm_A", "2q2k_A"]
    np.testing.assert_allclose(f["template_sum_probs"][:, 0], [11.0, 8.0, 0.0])
    n = len(query)
    assert f["template_aatype"].shape == (3, n, 22)
    assert f["template_all_atom_positions"].shape == (3, n, 37, 3)
    assert f["template_all_atom_masks"].shape == (3, n, 37)
    # 1HF9 is not in the local mirror: an error message, not a crash.
    assert len(result.errors) == 1 and "1hf9" in result.errors[0] and "not found" in result.errors[0]
    dropped = {s.split()[1] for s in result.skipped}
    assert dropped == {"3u8v", "4zey", "3zee", "5kc1", "4i6p"}

    # 2CRB_A: query 11-30 (1-based) aligned to template 32-51, no gaps.
    seq = f["template_sequence"][0].decode()
    assert seq == "-" * 10 + "EEAISCHRKATTYLSEAMKL" + "-" * (n - 30)
    crb = mmcif.parse_mmcif_file(mmcif_dir / "2crb.cif")
    pos, mask = crb.get_atom_positions("A")
    np.testing.assert_array_equal(f["template_all_atom_positions"][0, 10:30], pos[31:51])
    np.testing.assert_array_equal(f["template_all_atom_masks"][0, 10:30], mask[31:51])
    assert f["template_all_atom_masks"][0, :10].sum() == 0
    aatype = f["template_aatype"][0].argmax(-1)
    assert np.all(aatype[:10] == rc.HHBLITS_AA_TO_ID["-"])
    assert aatype[10] == rc.HHBLITS_AA_TO_ID["E"]

    # 2Q2K_A: query 56-72 -> template 54-70, of which 68-70 (1-based) are unobserved.
    masks = f["template_all_atom_masks"][2]
    assert masks[55:69].sum(-1).min() > 0 and masks[69:72].sum() == 0


def test_full_path_no_cutoff_max_hits_and_warnings(mmcif_dir, openfold_short):
    query, hits = openfold_short
    result = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01", kalign_binary="").get_templates(query, hits)
    names = [d.decode() for d in result.features["template_domain_names"]]
    assert names == ["3u8v_A", "2crb_A", "4zey_A", "1psm_A", "3zee_A", "4i6p_A", "2q2k_A"]
    # 5KC1 F/J: the aligned residues are unobserved in the crystal -> warnings (AlphaFold's).
    assert len(result.warnings) == 2 and all("all zeros" in w for w in result.warnings)
    assert len(result.errors) == 1

    top2 = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01", max_hits=2, kalign_binary="").get_templates(
        query, hits
    )
    assert [d.decode() for d in top2.features["template_domain_names"]] == ["3u8v_A", "2crb_A"]

    # The query was released in 2008-03: cut-off = release - 60 days, so 2Q2K (2008-02-05)
    # goes too; only 2CRB and 1PSM remain.
    early = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01", kalign_binary="").get_templates(
        query, hits, query_release_date="2008-03-01"
    )
    assert [d.decode() for d in early.features["template_domain_names"]] == ["2crb_A", "1psm_A"]


def test_no_templates_gives_empty_features(mmcif_dir, openfold_short):
    query, hits = openfold_short
    result = templates.TemplateFeaturizer(mmcif_dir, "1980-01-01", kalign_binary="").get_templates(query, hits)
    f = result.features
    n = len(query)
    assert f["template_aatype"].shape == (0, n, 22)
    assert f["template_all_atom_positions"].shape == (0, n, 37, 3)
    assert f["template_all_atom_masks"].shape == (0, n, 37)
    assert f["template_sum_probs"].shape == (0, 1)
    assert f["template_domain_names"].shape == (0,) and f["template_sequence"].shape == (0,)
    empty = templates.empty_template_features(n)
    assert {k: (v.shape, v.dtype) for k, v in empty.items()} == {k: (v.shape, v.dtype) for k, v in f.items()}


def test_hmmsearch_hits_keep_their_order(shared_dir, mmcif_dir):
    msa_dir = shared_dir / "data" / "msas" / "4zey_A"
    query = "".join((shared_dir / "data" / "seqs" / "4zey_A.fasta").read_text().splitlines()[1:])
    hits = parse_hmmsearch_sto((msa_dir / "hmm_output.sto").read_text(), query)[:3]
    assert [h.name.split()[0] for h in hits][:2] == ["4zey_A", "2crb_A"]
    assert all(h.sum_probs is None for h in hits)
    r = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01", kalign_binary="").get_templates(
        query, hits, query_pdb_code="4zey"
    )
    assert [d.decode() for d in r.features["template_domain_names"]] == ["2crb_A"]
    np.testing.assert_array_equal(r.features["template_sum_probs"], [[0.0]])
    assert "identical to Query" in r.skipped[0]


# ---------------------------------------------------------------------------------------------
# Prefilter, names, release tables.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,expected",
    [
        ("1ABC_A", ("1abc", "A")),
        ("1abc_A mol:protein length:76  UBIQUITIN", ("1abc", "A")),
        ("4zey_A/2-84", ("4zey", "A")),
        ("7XYZ_AB1 some description", ("7xyz", "AB1")),
        ("1abc_. unknown chain", ("1abc", ".")),
    ],
)
def test_pdb_id_and_chain(name, expected):
    assert templates.get_pdb_id_and_chain(name) == expected


def test_bad_hit_name_is_an_error_not_a_crash(mmcif_dir):
    hit = _hit("UniRef90_X", UBQ_1_37, UBQ_1_37, range(37), range(37))
    r = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01").get_templates(UBQ_1_37, [hit])
    assert r.features["template_aatype"].shape == (0, 37, 22)
    assert len(r.errors) == 1 and "PDBID_chain" in r.errors[0]


def test_prefilter_rules(mmcif_dir):
    ubq = mmcif.parse_mmcif_file(mmcif_dir / "1ubq.cif").chain_to_seqres["A"]
    query = ubq[:60]
    f = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01", kalign_binary="")

    def run(hit, **kw):
        return f.get_templates(query, [hit], **kw)

    # Near-duplicate: hit sequence inside the query and > 95 % of its length.
    dup = _ungapped_hit("1UBQ_A", query, ubq, 0, 0, 58)
    r = run(dup)
    assert len(r.features["template_sequence"]) == 0 and "subsequence" in r.skipped[0]
    # 57/60 = 0.95 is not > 0.95: kept.
    assert len(run(_ungapped_hit("1UBQ_A", query, ubq, 0, 0, 57)).features["template_sequence"]) == 1
    # Too few aligned columns (6/60 <= 0.1) and too short (< 10 residues).
    r = run(_ungapped_hit("1UBQ_A", query, ubq, 0, 0, 6))
    assert "too small" in r.skipped[0]
    r = run(_ungapped_hit("1UBQ_A", query, ubq, 0, 0, 9))
    assert "too short" in r.skipped[0]
    # Same entry as the query.
    r = run(_ungapped_hit("1UBQ_A", query, ubq, 0, 0, 30), query_pdb_code="1UBQ")
    assert "identical to Query" in r.skipped[0]
    # Strict mode reports the PDB-id case as an error, as AlphaFold does.
    strict = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01", strict_error_check=True)
    r = strict.get_templates(query, [_ungapped_hit("1UBQ_A", query, ubq, 0, 0, 30)], query_pdb_code="1ubq")
    assert len(r.errors) == 1


def test_release_date_table_and_obsolete_ids(tmp_path, mmcif_dir):
    ubq = mmcif.parse_mmcif_file(mmcif_dir / "1ubq.cif").chain_to_seqres["A"]
    dates = tmp_path / "release_dates.txt"
    dates.write_text("1ubq: 1987-04-16\n2crb: 2005-11-20\n")
    obsolete = tmp_path / "obsolete.dat"
    obsolete.write_text(
        " LIST OF OBSOLETE COORDINATE ENTRIES AND SUCCESSORS\n"
        "OBSLTE    31-JUL-94 9UBQ     1UBQ\n"
        "OBSLTE    31-JUL-94 8XXX\n"
    )
    assert templates.parse_obsolete_pdbs(str(obsolete)) == {"9ubq": "1ubq"}
    hit = _ungapped_hit("9UBQ_A", UBQ_1_37, ubq, 2, 2, 32)
    f = templates.TemplateFeaturizer(
        mmcif_dir, "2100-01-01", release_dates_path=str(dates), obsolete_pdbs_path=str(obsolete), kalign_binary=""
    )
    r = f.get_templates(UBQ_1_37, [hit])
    assert [d.decode() for d in r.features["template_domain_names"]] == ["1ubq_A"]
    # The table drops the hit before its mmCIF is read.
    f = templates.TemplateFeaturizer(
        mmcif_dir, "1980-01-01", release_dates_path=str(dates), obsolete_pdbs_path=str(obsolete)
    )
    r = f.get_templates(UBQ_1_37, [hit])
    assert len(r.features["template_sequence"]) == 0 and "prefilter" in r.skipped[0]


def test_unparseable_template_mmcif_is_a_warning(tmp_path, mmcif_dir):
    shutil.copy(mmcif_dir / "1ubq.cif", tmp_path / "1ubq.cif")
    (tmp_path / "1bad.cif").write_text("data_1BAD\nloop_\n_atom_site.id\n")
    ubq = mmcif.parse_mmcif_file(mmcif_dir / "1ubq.cif").chain_to_seqres["A"]
    hits = [
        _ungapped_hit("1BAD_A", UBQ_1_37, ubq, 2, 2, 32, sum_probs=50.0),
        _ungapped_hit("1UBQ_A", UBQ_1_37, ubq, 2, 2, 32, sum_probs=40.0),
    ]
    r = templates.TemplateFeaturizer(tmp_path, "2100-01-01").get_templates(UBQ_1_37, hits)
    assert [d.decode() for d in r.features["template_domain_names"]] == ["1ubq_A"]
    assert len(r.warnings) == 1 and "1bad" in r.warnings[0] and not r.errors


def test_bad_constructor_arguments(tmp_path, mmcif_dir):
    with pytest.raises(ValueError, match="Could not find CIFs"):
        templates.TemplateFeaturizer(tmp_path, "2020-01-01")
    with pytest.raises(ValueError, match="YYYY-MM-DD"):
        templates.TemplateFeaturizer(mmcif_dir, "01/01/2020")


# ---------------------------------------------------------------------------------------------
# Realignment (hit sequence differs from the mmCIF SEQRES).
# ---------------------------------------------------------------------------------------------


def test_realignment_with_point_mutation(mmcif_dir):
    ubq = mmcif.parse_mmcif_file(mmcif_dir / "1ubq.cif").chain_to_seqres["A"]
    exact = _ungapped_hit("1UBQ_A", UBQ_1_37, ubq, 2, 2, 32)
    mutated_seq = exact.hit_sequence[:10] + "W" + exact.hit_sequence[11:]
    mutated = _hit("1UBQ_A", exact.query, mutated_seq, exact.indices_query, exact.indices_hit)
    f = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01", kalign_binary="")
    a = f.get_templates(UBQ_1_37, [exact])
    b = f.get_templates(UBQ_1_37, [mutated])
    assert len(b.warnings) == 1 and "Realigning" in b.warnings[0]
    for k in ("template_aatype", "template_all_atom_positions", "template_all_atom_masks", "template_sequence"):
        np.testing.assert_array_equal(a.features[k], b.features[k])


def test_realignment_unmatched_residue_takes_last_residue_like_alphafold(mmcif_dir):
    obj = mmcif.parse_mmcif_file(mmcif_dir / "1ubq.cif")
    ubq = obj.chain_to_seqres["A"]
    pos, mask = obj.get_atom_positions("A")
    query = UBQ_1_37[:15] + "G" + UBQ_1_37[15:]
    hit_seq = ubq[2:15] + "G" + ubq[15:34]  # an extra residue the chain does not have
    hit = _hit("1UBQ_A", query[2:35], hit_seq, range(2, 35), range(2, 35))
    r = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01", kalign_binary="").get_templates(query, [hit])
    f = r.features
    assert f["template_sequence"][0].decode() == "--" + ubq[2:15] + "G" + ubq[15:34] + "---"
    np.testing.assert_array_equal(f["template_all_atom_positions"][0, 2:15], pos[2:15])
    np.testing.assert_array_equal(f["template_all_atom_positions"][0, 16:35], pos[15:34])
    # AlphaFold's -1 index: the unmatched query residue gets the chain's last residue (GLY 76).
    np.testing.assert_array_equal(f["template_all_atom_positions"][0, 15], pos[-1])
    np.testing.assert_array_equal(f["template_all_atom_masks"][0, 15], mask[-1])


def test_realignment_rejects_dissimilar_sequence(mmcif_dir):
    ubq = mmcif.parse_mmcif_file(mmcif_dir / "1ubq.cif").chain_to_seqres["A"]
    exact = _ungapped_hit("1UBQ_A", UBQ_1_37, ubq, 2, 2, 32)
    scrambled = "".join(random.Random(0).sample(exact.hit_sequence, 32))
    hit = _hit("1UBQ_A", exact.query, scrambled, exact.indices_query, exact.indices_hit)
    r = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01", kalign_binary="").get_templates(UBQ_1_37, [hit])
    assert len(r.errors) == 1 and "90 %" in r.errors[0]


def test_kalign_binary_is_used_when_given(tmp_path, mmcif_dir):
    # A stand-in kalign with kalign's command line (-i IN -o OUT -format fasta).
    fake = tmp_path / "kalign"
    log = tmp_path / "calls.txt"
    fake.write_text(
        f"#!{sys.executable}\n"
        "import sys\n"
        "from jaxfold.data.templates import global_align\n"
        "a = sys.argv\n"
        'inp, out = a[a.index("-i") + 1], a[a.index("-o") + 1]\n'
        f'open({str(log)!r}, "a").write(" ".join(a[1:]) + "\\n")\n'
        'seqs = [l.strip() for l in open(inp) if l.strip() and not l.startswith(">")]\n'
        "x, y = global_align(*seqs)\n"
        'open(out, "w").write(">sequence 1\\n" + x + "\\n>sequence 2\\n" + y + "\\n")\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    ubq = mmcif.parse_mmcif_file(mmcif_dir / "1ubq.cif").chain_to_seqres["A"]
    exact = _ungapped_hit("1UBQ_A", UBQ_1_37, ubq, 2, 2, 32)
    mutated = _hit(
        "1UBQ_A",
        exact.query,
        exact.hit_sequence[:5] + "W" + exact.hit_sequence[6:],
        exact.indices_query,
        exact.indices_hit,
    )
    f = templates.TemplateFeaturizer(mmcif_dir, "2100-01-01", kalign_binary=str(fake))
    assert f.kalign_binary == str(fake)
    r = f.get_templates(UBQ_1_37, [mutated])
    assert "-format fasta" in log.read_text()
    assert r.features["template_sequence"][0].decode() == "--" + ubq[2:34] + "---"


# ---------------------------------------------------------------------------------------------
# The fallback aligner.
# ---------------------------------------------------------------------------------------------

_BLOSUM = substitution_matrices.load("BLOSUM62")
_BLOSUM_LETTERS = "ARNDCQEGHILKMFPSTWYVBZX"


def _rescore(x: str, y: str, gap_open=11.0, gap_extend=1.0) -> float:
    """Score of an alignment: BLOSUM62, affine internal gaps, free end gaps."""

    def letter(c):
        return c if c in _BLOSUM_LETTERS else "X"

    score = 0.0
    cols = list(zip(x, y))
    for gapped_side in (0, 1):
        k = 0
        while k < len(cols):
            if cols[k][gapped_side] == "-":
                start = k
                while k < len(cols) and cols[k][gapped_side] == "-":
                    k += 1
                before = any(c[gapped_side] != "-" for c in cols[:start])
                after = any(c[gapped_side] != "-" for c in cols[k:])
                if before and after:
                    score -= gap_open + (k - start - 1) * gap_extend
            else:
                k += 1
    for a, b in cols:
        if a != "-" and b != "-":
            score += _BLOSUM[letter(a), letter(b)]
    return score


def _all_alignments(a: str, b: str):
    if not a:
        yield "-" * len(b), b
        return
    if not b:
        yield a, "-" * len(a)
        return
    for x, y in _all_alignments(a[1:], b[1:]):
        yield a[0] + x, b[0] + y
    for x, y in _all_alignments(a[1:], b):
        yield a[0] + x, "-" + y
    for x, y in _all_alignments(a, b[1:]):
        yield "-" + x, b[0] + y


def test_global_align_is_optimal_on_small_cases():
    rng = random.Random(1234)
    letters = "ACDEFGHIKLMNPQRSTVWY"
    cases = [("", "ACD"), ("A", "A"), ("WW", "WW")]
    for _ in range(20):
        la, lb = rng.randint(1, 5), rng.randint(1, 5)
        cases.append(("".join(rng.choice(letters) for _ in range(la)), "".join(rng.choice(letters) for _ in range(lb))))
    for a, b in cases:
        for go, ge in ((11.0, 1.0), (2.0, 2.0), (5.0, 0.5)):
            x, y = templates.global_align(a, b, gap_open=go, gap_extend=ge)
            assert x.replace("-", "") == a and y.replace("-", "") == b and len(x) == len(y)
            assert not any(c1 == "-" and c2 == "-" for c1, c2 in zip(x, y))
            best = max(_rescore(p, q, go, ge) for p, q in _all_alignments(a, b))
            assert _rescore(x, y, go, ge) == pytest.approx(best), (a, b, go, ge, x, y)


def test_global_align_fragment_in_chain():
    chain = "MQIFVKTLTGKTITLEVEPSDTIENVKAKIQDKEGIPPDQQRLIFAGKQLEDGRTLSDYNIQKESTLHLVLRLRGG"
    fragment = chain[20:50]
    x, y = templates.global_align(fragment, chain)
    assert x == "-" * 20 + fragment + "-" * 26 and y == chain
    x, y = templates.global_align(chain[5:30] + chain[33:60], chain)  # a 3-residue deletion
    assert y == chain and x == "-" * 5 + chain[5:30] + "---" + chain[33:60] + "-" * 16


def test_corrupt_and_missing_template_mmcifs_are_reported_once_grouped(tmp_path, mmcif_dir, caplog):
    """Garbage text, random bytes and a truncated copy of 1ubq.cif, plus two hits whose mmCIF is
    missing: the one good template is used; the result groups the others by reason (JSON-able) and
    the search logs one warning line summarising them, not a line per hit."""
    import json
    import logging

    shutil.copy(mmcif_dir / "1ubq.cif", tmp_path / "1ubq.cif")
    (tmp_path / "1gar.cif").write_text("hello, this is not an mmCIF file\n")
    (tmp_path / "1rnd.cif").write_bytes(np.random.default_rng(0).integers(0, 256, 3000, np.uint8).tobytes())
    (tmp_path / "1trc.cif").write_bytes((mmcif_dir / "1ubq.cif").read_bytes()[:20000])
    ubq = mmcif.parse_mmcif_file(mmcif_dir / "1ubq.cif").chain_to_seqres["A"]
    names = ["1GAR_A", "1RND_A", "1TRC_A", "1MS1_A", "1MS2_A", "1UBQ_A"]
    hits = [_ungapped_hit(n, UBQ_1_37, ubq, 2, 2, 32, sum_probs=60.0 - i, index=i + 1) for i, n in enumerate(names)]
    with caplog.at_level(logging.INFO, logger="jaxfold.data.templates"):
        r = templates.TemplateFeaturizer(tmp_path, "2100-01-01", kalign_binary="").get_templates(UBQ_1_37, hits)
    assert [d.decode() for d in r.features["template_domain_names"]] == ["1ubq_A"]
    assert r.skipped_by_reason == {
        "mmCIF unreadable (corrupt or truncated)": ["1gar_A", "1rnd_A", "1trc_A"],
        "mmCIF file not found": ["1ms1_A", "1ms2_A"],
    }
    assert json.loads(json.dumps(r.skipped_by_reason)) == r.skipped_by_reason
    summaries = [rec for rec in caplog.records if "template hit(s) not used" in rec.getMessage()]
    assert len(summaries) == 1 and summaries[0].levelno == logging.WARNING
    line = summaries[0].getMessage()
    assert line.startswith("5 template hit(s) not used:") and "mmCIF file not found: 2 (1ms1_A, 1ms2_A)" in line
    assert "mmCIF unreadable (corrupt or truncated): 3 (1gar_A, 1rnd_A, 1trc_A)" in line
    assert set(r.skipped_by_reason) <= set(templates.SKIP_REASONS)


def test_filtered_hits_are_grouped_as_filters(mmcif_dir, openfold_short):
    query, hits = openfold_short
    r = templates.TemplateFeaturizer(mmcif_dir, "2010-01-01", kalign_binary="").get_templates(query, hits)
    assert r.skipped_by_reason["mmCIF file not found"] == ["1hf9_B"]
    late = r.skipped_by_reason["released after the template cut-off"]
    assert sorted(late) == ["3u8v_A", "3zee_A", "4i6p_A", "4zey_A", "5kc1_F", "5kc1_J"]
    assert templates.summarize_skipped({}) == ""
