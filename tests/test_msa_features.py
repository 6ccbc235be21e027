"""Sequence / MSA features against DeepMind's pipeline output and AlphaFold's rules."""

from __future__ import annotations

import numpy as np
import pytest

from jaxfold.common import residue_constants
from jaxfold.data import msa_features, parsers
from jaxfold.data.parsers import Msa

# Everything in features_raw.npz that the sequence / MSA featurisation makes (the
# template_* arrays come from the template featuriser).
SEQUENCE_KEYS = ["aatype", "between_segment_residues", "domain_name", "residue_index", "seq_length", "sequence"]
MSA_KEYS = ["deletion_matrix_int", "msa", "num_alignments", "msa_species_identifiers"]


def _as_comparable(array: np.ndarray) -> np.ndarray:
    if array.dtype == object:  # AlphaFold keeps strings as bytes objects
        return np.array([x.decode("utf-8") for x in array])
    return array


def test_features_raw_reference_exact(shared_dir):
    reference = np.load(shared_dir / "reference" / "features_raw.npz", allow_pickle=False)
    assert set(SEQUENCE_KEYS + MSA_KEYS) <= set(reference.files)
    assert (
        not set(reference.files)
        - set(SEQUENCE_KEYS + MSA_KEYS)
        - {k for k in reference.files if k.startswith("template_")}
    )
    sequence = str(reference["sequence"][0])
    description = str(reference["domain_name"][0])
    a3m = shared_dir / "reference" / "inputs" / "synthetic_msa.a3m"
    msa = parsers.parse_a3m(a3m.read_text(), source=str(a3m))

    features = {
        **msa_features.make_sequence_features(sequence, description, len(sequence)),
        **msa_features.make_msa_features([msa]),
    }
    for key in SEQUENCE_KEYS + MSA_KEYS:
        ours, theirs = _as_comparable(features[key]), reference[key]
        assert ours.shape == theirs.shape, key
        if theirs.dtype.kind != "U":
            assert ours.dtype == theirs.dtype, key
        np.testing.assert_array_equal(ours, theirs, err_msg=key)
    # AlphaFold's Python types: bytes in object arrays.
    assert features["domain_name"].dtype == object
    assert features["domain_name"][0] == b"ubiquitin_1-37"
    assert features["msa_species_identifiers"][0] == b""
    # The same through the combined helper.
    both = msa_features.make_sequence_and_msa_features(sequence, description, [msa])
    for key in SEQUENCE_KEYS + MSA_KEYS:
        np.testing.assert_array_equal(_as_comparable(both[key]), reference[key])


def test_dedup_across_msas_in_alphafold_order(shared_dir):
    directory = shared_dir / "data" / "msas" / "1psm_A"
    uniref = parsers.parse_stockholm((directory / "uniref90_hits.sto").read_text())
    bfd = parsers.parse_a3m((directory / "bfd_uniclust_hits.a3m").read_text())
    mgnify = parsers.parse_stockholm((directory / "mgnify_hits.sto").read_text())
    features = msa_features.make_msa_features([uniref, bfd, mgnify])

    expected_rows, expected_dels, seen = [], [], set()
    for msa in (uniref, bfd, mgnify):
        for seq, dels in zip(msa.sequences, msa.deletion_matrix):
            if seq not in seen:
                seen.add(seq)
                expected_rows.append([residue_constants.HHBLITS_AA_TO_ID[c] for c in seq])
                expected_dels.append(dels)
    np.testing.assert_array_equal(features["msa"], np.array(expected_rows, np.int32))
    np.testing.assert_array_equal(features["deletion_matrix_int"], expected_dels)
    n = len(expected_rows)
    assert n < len(uniref) + len(bfd) + len(mgnify)  # duplicates were dropped
    np.testing.assert_array_equal(features["num_alignments"], np.full(38, n, np.int32))
    assert features["msa"].dtype == np.int32 and features["msa"].shape == (n, 38)

    # The mapping form orders (UniRef90, BFD, MGnify) whatever the given order.
    by_name = msa_features.make_msa_features({"mgnify": mgnify, "bfd_uniclust": bfd, "uniref90": uniref})
    for key in MSA_KEYS:
        np.testing.assert_array_equal(by_name[key], features[key])


def test_species_identifiers(shared_dir):
    bfd = parsers.parse_a3m((shared_dir / "data/msas/1psm_A/bfd_uniclust_hits.a3m").read_text())
    features = msa_features.make_msa_features([bfd])
    species = [s.decode() for s in features["msa_species_identifiers"]]
    assert species[0] == ""  # 'query'
    assert species[1] == "PLAFA"  # tr|A0A024VQI0|A0A024VQI0_PLAFA
    assert msa_features.species_identifier("sp|P0C2L1|A3X1_LOXLA/3-40 desc") == "LOXLA"
    assert msa_features.species_identifier("tr|A0A146SKV9|A0A146SKV9_FUNHE_12") == "FUNHE"
    assert msa_features.species_identifier("UniRef90_Q9NIG6/58-95 [subseq from] x") == ""
    assert msa_features.species_identifier("") == ""


def test_letter_mapping_unknown_and_ambiguous():
    msa = Msa(["ACDX", "BZU-", "JO*."], [[0] * 4, [0, 2, 0, 0], [0] * 4], ["q", "a", "b"])
    features = msa_features.make_msa_features([msa])
    ids = residue_constants.HHBLITS_AA_TO_ID
    assert features["msa"].tolist() == [
        [ids["A"], ids["C"], ids["D"], 20],
        [ids["D"], ids["E"], ids["C"], 21],  # B->D, Z->E, U->C, gap 21
        [20, 20, 20, 20],  # J, O and non-letters -> X
    ]
    assert features["deletion_matrix_int"][1].tolist() == [0, 2, 0, 0]


def test_depth_limits_are_parameters(shared_dir):
    directory = shared_dir / "data" / "msas"
    mgnify = parsers.parse_stockholm((directory / "6kwc_1/mgnify_hits.sto").read_text())
    assert len(mgnify) == 1698
    ordered = msa_features.order_and_limit_msas({"mgnify": mgnify})
    assert len(ordered[0][1]) == msa_features.DEFAULT_MGNIFY_MAX_HITS == 501
    assert len(msa_features.order_and_limit_msas({"mgnify": mgnify}, mgnify_max_hits=None)[0][1]) == 1698
    uniref = parsers.parse_stockholm((directory / "2crb_A/uniref90_hits.sto").read_text())
    assert msa_features.DEFAULT_UNIREF_MAX_HITS == 10000
    mgnify_2crb = parsers.parse_stockholm((directory / "2crb_A/mgnify_hits.sto").read_text())
    limited = msa_features.make_msa_features(
        {"uniref90": uniref, "mgnify": mgnify_2crb}, uniref_max_hits=10, mgnify_max_hits=5
    )
    full_rows = msa_features.make_msa_features([uniref.truncate(10), mgnify_2crb.truncate(5)])
    np.testing.assert_array_equal(limited["msa"], full_rows["msa"])
    # The sequence form is used as given (AlphaFold limits while reading the files).
    assert msa_features.make_msa_features([mgnify])["msa"].shape[0] == len(set(mgnify.sequences))
    # Order: UniRef90, BFD kinds, MGnify, then others in their given order.
    names = [
        n
        for n, _ in msa_features.order_and_limit_msas(
            {"other_b": uniref, "mgnify": uniref, "small_bfd": uniref, "other_a": uniref, "uniref90": uniref}
        )
    ]
    assert names == ["uniref90", "small_bfd", "mgnify", "other_b", "other_a"]


def test_sequence_features_rules():
    features = msa_features.make_sequence_features("MKUX", "d", 4)
    assert features["aatype"].shape == (4, 21) and features["aatype"].dtype == np.int32
    assert features["aatype"].argmax(-1).tolist() == [
        residue_constants.restype_order["M"],
        residue_constants.restype_order["K"],
        20,
        20,
    ]
    assert features["sequence"][0] == b"MKUX"
    with pytest.raises(ValueError, match="num_res"):
        msa_features.make_sequence_features("MK", "d", 3)


def test_msa_feature_errors():
    with pytest.raises(ValueError, match="At least one MSA"):
        msa_features.make_msa_features([])
    with pytest.raises(ValueError, match="at least one sequence"):
        msa_features.make_msa_features([Msa(["AC"], [[0, 0]], ["q"]), Msa([], [], [])])
    with pytest.raises(ValueError, match="row 1 \\('bad'\\)"):
        msa_features.make_msa_features([Msa(["AC", "A"], [[0, 0], [0]], ["q", "bad"])])
