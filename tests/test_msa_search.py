"""get_msas: precomputed directories, real pyhmmer jackhmmer searches, single sequence."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

from jaxfold.common import residue_constants
from jaxfold.data import msa_features, parsers
from jaxfold.data.msa_search import MsaSearchError, get_msas
from jaxfold.data.parsers import FastaRecord


@pytest.fixture(scope="module")
def data_dir(shared_dir) -> Path:
    return shared_dir / "data"


def _query(data_dir: Path, target: str) -> FastaRecord:
    return parsers.read_fasta(data_dir / "seqs" / f"{target}.fasta")[0]


# ---------------------------------------------------------------------------------------
# precomputed
# ---------------------------------------------------------------------------------------


def test_precomputed_alphafold_layout(data_dir):
    query = _query(data_dir, "1psm_A")
    msas = get_msas(query, "precomputed", msa_dir=data_dir / "msas")
    # uniprot_hits.sto (pairing) and hmm_output.sto (templates) are skipped; AlphaFold's
    # order is UniRef90, BFD, MGnify.
    assert list(msas) == ["uniref90", "bfd_uniclust", "mgnify"]
    assert [len(m) for m in msas.values()] == [20, 12, 9]
    # Pointing at the sequence's own directory works the same.
    direct = get_msas(query, "precomputed", msa_dir=data_dir / "msas" / "1psm_A")
    assert {k: m.sequences for k, m in direct.items()} == {k: m.sequences for k, m in msas.items()}
    features = msa_features.make_msa_features(msas)
    assert features["msa"].shape == (features["num_alignments"][0], 38)
    np.testing.assert_array_equal(features["msa"][0], [residue_constants.HHBLITS_AA_TO_ID[c] for c in query.sequence])


def test_precomputed_other_layouts_and_depth_limit(data_dir):
    # OpenFold example: name '6KWC_1', directory '6kwc_1' (case-insensitive match);
    # bfd_uniref_hits.a3m; MGnify 1698 rows cut to AlphaFold's 501.
    msas = get_msas(_query(data_dir, "6kwc_1"), "precomputed", msa_dir=data_dir / "msas")
    assert list(msas) == ["bfd_uniref", "mgnify"]
    assert [len(m) for m in msas.values()] == [1428, 501]
    unlimited = get_msas(
        _query(data_dir, "6kwc_1"), "precomputed", msa_dir=data_dir / "msas" / "6kwc_1", mgnify_max_hits=None
    )
    assert len(unlimited["mgnify"]) == 1698
    # ColabFold: non_pairing.a3m used, pairing.a3m (multimer pairing) skipped.
    msas = get_msas(_query(data_dir, "102m_A"), "precomputed", msa_dir=data_dir / "msas")
    assert list(msas) == ["non_pairing"] and len(msas["non_pairing"]) == 98
    # RoseTTAFold: any other *.a3m.
    msas = get_msas(_query(data_dir, "T1078"), "precomputed", msa_dir=data_dir / "msas")
    assert list(msas) == ["t000_.msa0"] and len(msas["t000_.msa0"]) == 426


def test_precomputed_prefers_sto_and_orders_extra_files(tmp_path, data_dir):
    source = data_dir / "msas" / "2q2k_A"
    target = tmp_path / "2q2k_A"
    target.mkdir()
    for name in ("uniref90_hits.sto", "mgnify_hits.sto", "bfd_uniclust_hits.a3m", "uniprot_hits.sto"):
        shutil.copy(source / name, target / name)
    # An A3M copy of UniRef90 with fewer rows: the Stockholm file must win.
    sto = (source / "uniref90_hits.sto").read_text()
    (target / "uniref90_hits.a3m").write_text(parsers.convert_stockholm_to_a3m(sto, max_sequences=3))
    (target / "extra.a3m").write_text((source / "bfd_uniclust_hits.a3m").read_text())
    (target / "pdb70_hits.hhr").write_text("")
    msas = get_msas(_query(data_dir, "2q2k_A"), "precomputed", msa_dir=tmp_path, uniref_max_hits=10)
    assert list(msas) == ["uniref90", "bfd_uniclust", "mgnify", "extra"]
    assert [len(m) for m in msas.values()] == [10, 4, 7, 4]


def test_precomputed_errors(tmp_path, data_dir):
    query = _query(data_dir, "1psm_A")
    with pytest.raises(MsaSearchError, match="not found"):
        get_msas(query, "precomputed", msa_dir=tmp_path / "missing")
    with pytest.raises(MsaSearchError, match="needs msa_dir"):
        get_msas(query, "precomputed")
    only_pairing = tmp_path / "1psm_A"
    only_pairing.mkdir()
    for name in ("uniprot_hits.sto", "hmm_output.sto"):
        shutil.copy(data_dir / "msas" / "1psm_A" / name, only_pairing / name)
    with pytest.raises(MsaSearchError, match="No alignment for '1psm_A'"):
        get_msas(query, "precomputed", msa_dir=tmp_path)
    # Alignments of another sequence are refused (their first row is not the query).
    with pytest.raises(MsaSearchError, match="belongs to another sequence"):
        get_msas(query, "precomputed", msa_dir=data_dir / "msas" / "2q2k_A")
    # Malformed file: the parser's error names the file.
    bad = tmp_path / "bad" / "1psm_A"
    bad.mkdir(parents=True)
    lines = (data_dir / "msas/1psm_A/bfd_uniclust_hits.a3m").read_text().splitlines()
    lines[3] = lines[3][:-2]
    (bad / "bfd_uniclust_hits.a3m").write_text("\n".join(lines))
    with pytest.raises(parsers.ParseError, match="bfd_uniclust_hits.a3m, line 3"):
        get_msas(query, "precomputed", msa_dir=tmp_path / "bad")


def test_single_sequence_and_bad_mode(data_dir):
    query = _query(data_dir, "2q2k_A")
    msas = get_msas(query, "single_sequence")
    assert list(msas) == ["single_sequence"]
    features = msa_features.make_msa_features(msas)
    assert features["msa"].shape == (1, 70)
    assert not features["deletion_matrix_int"].any()
    with pytest.raises(ValueError, match="Unknown MSA mode"):
        get_msas(query, "colabfold_server")


# ---------------------------------------------------------------------------------------
# search (pyhmmer jackhmmer)
# ---------------------------------------------------------------------------------------

# README: HMMER 3.3.2 `jackhmmer -N 1 --F1 0.0005 --F2 0.00005 --F3 0.0000005 --incE 0.0001
# -E 0.0001` against the concatenation of these three files (9,494 sequences).
README_DB = [
    "seqdb/uniref90_hits_union.fasta",
    "seqdb/uniref100_colabfold_hits_union.fasta",
    "seqdb/af3_miniature/uniref90__subsampled_1000.fasta",
]
README_JACKHMMER_ROWS = {"1psm_A": 9, "2q2k_A": 16}


@pytest.fixture(scope="module")
def pyhmmer():
    return pytest.importorskip("pyhmmer", reason="pyhmmer is not installed: jackhmmer search mode cannot run")


@pytest.mark.parametrize("target", sorted(README_JACKHMMER_ROWS))
def test_jackhmmer_search_matches_readme_counts(pyhmmer, data_dir, target):
    query = _query(data_dir, target)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # hhblits skipped
        msas = get_msas(query, "search", databases={"uniref90": [data_dir / p for p in README_DB]})
    msa = msas["uniref90"]
    expected = README_JACKHMMER_ROWS[target]
    # pyhmmer runs HMMER's own code with the same flags and the same Z (database size),
    # so the count is expected to be exact (it is with pyhmmer 0.12.3 / HMMER 3.4 vs the
    # README's HMMER 3.3.2 binary); one borderline hit either way is tolerated so that
    # an HMMER calibration change does not break the test.
    assert abs(len(msa) - expected) <= 1, (len(msa), expected)
    assert msa.sequences[0] == query.sequence
    assert msa.descriptions[0].split()[0] == query.name
    assert {len(s) for s in msa.sequences} == {len(query.sequence)}
    # Plausibility: the hits are segments of this target's own real UniRef90 hits
    # (names '<db entry>/<from>-<to>' of the union database).
    real = parsers.parse_stockholm((data_dir / "msas" / target / "uniref90_hits.sto").read_text())
    real_names = {d.split()[0] for d in real.descriptions}
    found = [d.split()[0].rsplit("/", 1)[0] for d in msa.descriptions[1:]]
    assert sum(name in real_names for name in found) >= 0.8 * len(found)


def test_search_writes_a3m_for_precomputed_rerun(pyhmmer, tmp_path, data_dir):
    query = _query(data_dir, "2q2k_A")
    db = data_dir / "seqdb"
    with pytest.warns(RuntimeWarning, match="BFD") if shutil.which("hhblits") is None else warnings.catch_warnings():
        searched = get_msas(
            query,
            "search",
            databases={"mgnify": db / "mgnify_hits_union.fasta", "uniref90": db / "uniref90_hits_union.fasta"},
            output_dir=tmp_path / "msas",
            mgnify_max_hits=3,
        )
    assert list(searched) == ["uniref90", "mgnify"]  # AlphaFold's order
    assert len(searched["uniref90"]) == 16  # README: 16 rows (same with the union alone)
    assert len(searched["mgnify"]) == 3  # 4 rows found, depth limit 3 (query included)
    written = sorted(p.name for p in (tmp_path / "msas" / "2q2k_A").iterdir())
    assert written == ["mgnify_hits.a3m", "uniref90_hits.a3m"]
    again = get_msas(query, "precomputed", msa_dir=tmp_path / "msas")
    assert list(again) == list(searched)
    for name in searched:
        assert again[name].sequences == searched[name].sequences
        assert again[name].deletion_matrix == searched[name].deletion_matrix
    features = msa_features.make_msa_features(again)
    assert features["msa"].shape[1] == 70


def test_search_errors(pyhmmer, tmp_path, data_dir):
    query = _query(data_dir, "1psm_A")
    with pytest.raises(MsaSearchError, match="at least one database"):
        get_msas(query, "search")
    with pytest.raises(MsaSearchError, match="not found"):
        get_msas(query, "search", databases={"uniref90": tmp_path / "nope.fasta"})


def test_search_without_hits_keeps_query(pyhmmer, tmp_path, data_dir):
    # A query unrelated to every database sequence: the MSA is the query alone.
    query = FastaRecord("poly", "poly", "WWWWPPPPGGGGWWWWPPPPGGGG")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        msas = get_msas(query, "search", databases={"uniref90": data_dir / "seqdb/pdb_seqres_local.txt"})
    assert msas["uniref90"].sequences == [query.sequence]
