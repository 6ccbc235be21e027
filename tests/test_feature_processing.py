"""Tests for jaxfold.data.feature_processing against DeepMind's processed features.

The reference (`shared/reference/features.npz`) was made by AlphaFold's
own TF input pipeline from `features_raw.npz`.  Deterministic features must
match exactly; the random ones (MSA sample, BERT masking, extra-MSA crop) are
checked by invariants, by an independent brute-force recomputation that is
validated on the reference itself, and by replaying the reference's random
choices through our deterministic code path (bit-exact).
"""

from __future__ import annotations

import numpy as np
import pytest

from jaxfold.common import residue_constants as rc
from jaxfold.config import model_config
from jaxfold.data import feature_processing as fp

REF_OVERRIDES = dict(
    evoformer_num_block=2,
    extra_msa_stack_num_block=1,
    structure_module_num_layer=2,
    num_recycle=1,
    max_extra_msa=16,
    max_msa_clusters=12,
)
EXACT_KEYS = [
    "aatype",
    "residue_index",
    "seq_length",
    "seq_mask",
    "target_feat",
    "atom14_atom_exists",
    "atom37_atom_exists",
    "residx_atom14_to_atom37",
    "residx_atom37_to_atom14",
    "template_aatype",
    "template_all_atom_masks",
    "template_all_atom_positions",
    "template_mask",
    "template_pseudo_beta",
    "template_pseudo_beta_mask",
    "template_sum_probs",
    "msa_row_mask",
    "extra_msa_row_mask",
    "msa_mask",
    "extra_msa_mask",
    "is_distillation",
]
HHBLITS_TO_OURS = np.asarray(rc.MAP_HHBLITS_AATYPE_TO_OUR_AATYPE)


# ---------------------------------------------------------------------------
# Fixtures
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ref_dir(shared_dir):
    d = shared_dir / "reference"
    if not (d / "features.npz").is_file():
        pytest.skip(f"reference features not found in {d}")
    return d


@pytest.fixture(scope="module")
def cfg():
    return model_config("model_1_ptm", **REF_OVERRIDES)


@pytest.fixture(scope="module")
def raw(ref_dir):
    with np.load(ref_dir / "features_raw.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def ref(ref_dir):
    with np.load(ref_dir / "features.npz") as f:
        return {k: f[k] for k in f.files}


@pytest.fixture(scope="module")
def out(raw, cfg):
    return fp.process_features(raw, cfg, seed=0)


@pytest.fixture(scope="module")
def raw_rows(raw):
    """Raw MSA in our residue order, deletions, and a row lookup by sequence."""
    msa = HHBLITS_TO_OURS[raw["msa"]]
    dels = raw["deletion_matrix_int"].astype(np.float64)
    lookup = {bytes(r.astype(np.int32)): i for i, r in enumerate(msa)}
    assert len(lookup) == msa.shape[0], "test needs unique raw MSA rows"
    return msa, dels, lookup


# ---------------------------------------------------------------------------
# Helpers (independent of the module under test)
# ---------------------------------------------------------------------------
def _rows_of(seqs, lookup):
    return np.array([lookup[bytes(np.asarray(r, np.int32))] for r in seqs], np.int64)


def _deletion_value(d):
    return np.arctan(np.asarray(d, np.float64) / 3.0) * 2.0 / np.pi


def _slice_rows(batch, s, lookup):
    """(cluster raw rows, real extra raw rows) of slice `s` of a processed batch."""
    n_c = int(batch["msa_row_mask"][s].sum())
    n_e = int(batch["extra_msa_row_mask"][s].sum())
    clusters = _rows_of(batch["true_msa"][s][:n_c], lookup)
    extra = _rows_of(batch["extra_msa"][s][:n_e], lookup)
    return clusters, extra


def _brute_force_clusters(msa, dels, clusters, bert_msa, extra_all):
    """AlphaFold's nearest_neighbor_clusters + summarize_clusters, by loops."""
    n_c, n = bert_msa.shape
    profile = np.zeros([n_c, n, 23])
    counts = np.ones([n_c, n])
    del_sum = dels[clusters].copy()
    for c in range(n_c):
        profile[c, np.arange(n), bert_msa[c]] += 1
    for e in extra_all:
        scores = [np.sum((bert_msa[c] == msa[e]) & (bert_msa[c] < 21)) for c in range(n_c)]
        a = int(np.argmax(scores))  # first maximum, as tf.argmax
        profile[a, np.arange(n), msa[e]] += 1
        counts[a] += 1
        del_sum[a] += dels[e]
    return profile / counts[..., None], del_sum / counts


def _check_slice_invariants(batch, s, raw_rows):
    """Invariants every processed slice (ours or DeepMind's) satisfies."""
    msa, dels, lookup = raw_rows
    clusters, extra = _slice_rows(batch, s, lookup)
    n_c = clusters.size
    feat = batch["msa_feat"][s][:n_c]
    # Query first; sampled rows distinct and disjoint from the extra rows.
    assert clusters[0] == 0
    assert len(set(clusters.tolist()) | set(extra.tolist())) == n_c + extra.size
    # Deletion features of clusters and extra rows = those rows' raw deletions.
    np.testing.assert_array_equal(feat[..., 23], np.clip(dels[clusters], 0, 1))
    np.testing.assert_allclose(feat[..., 24], _deletion_value(dels[clusters]), atol=2e-7)
    n_e = extra.size
    np.testing.assert_array_equal(batch["extra_has_deletion"][s][:n_e], np.clip(dels[extra], 0, 1))
    np.testing.assert_allclose(batch["extra_deletion_value"][s][:n_e], _deletion_value(dels[extra]), atol=2e-7)
    # BERT: the MSA one-hot differs from true_msa only where bert_mask = 1.
    bert_msa = np.argmax(feat[..., :23], axis=-1)
    np.testing.assert_array_equal(feat[..., :23].sum(-1), 1.0)
    bm = batch["bert_mask"][s][:n_c].astype(bool)
    np.testing.assert_array_equal(bert_msa[~bm], batch["true_msa"][s][:n_c][~bm])
    # Cluster profiles: distributions, equal to a brute-force recomputation.
    profile = feat[..., 25:48]
    np.testing.assert_allclose(profile.sum(-1), 1.0, atol=2e-6)
    extra_all = np.setdiff1d(np.arange(msa.shape[0]), clusters)  # clustering uses all
    bf_profile, bf_del_mean = _brute_force_clusters(msa, dels, clusters, bert_msa, extra_all)
    np.testing.assert_allclose(profile, bf_profile, atol=2e-6)
    np.testing.assert_allclose(feat[..., 48], _deletion_value(bf_del_mean), atol=2e-6)
    return clusters, extra


# ---------------------------------------------------------------------------
# Exact reproduction
# ---------------------------------------------------------------------------
def test_keys_shapes_dtypes(out, ref):
    assert sorted(out) == sorted(ref)
    for k in ref:
        assert out[k].shape == ref[k].shape, k
        assert out[k].dtype == ref[k].dtype, k


@pytest.mark.parametrize("key", EXACT_KEYS)
def test_deterministic_features_exact(out, ref, key):
    np.testing.assert_array_equal(out[key], ref[key])


def test_query_is_first_row(out, ref, raw):
    query = np.argmax(raw["aatype"], axis=-1)
    for batch in (out, ref):
        np.testing.assert_array_equal(batch["true_msa"][:, 0], np.broadcast_to(query, batch["true_msa"][:, 0].shape))
        first = np.argmax(batch["msa_feat"][:, 0, :, :23], axis=-1)
        unmasked = batch["bert_mask"][:, 0] == 0
        np.testing.assert_array_equal(first[unmasked], np.broadcast_to(query, first.shape)[unmasked])


def test_random_crop_seed_shared_across_slices(out):
    seed = out["random_crop_to_size_seed"]
    assert seed.shape == (2, 2) and seed.dtype == np.int32
    np.testing.assert_array_equal(seed[0], seed[1])


def test_replay_reference_sample_is_bit_exact(raw, ref, cfg, raw_rows):
    """Given DeepMind's random choices, every sampled feature matches bit for bit."""
    _, _, lookup = raw_rows
    feats = fp.nonensembled_features(raw, cfg, 0)
    num_seq = raw["msa"].shape[0]
    for s in range(ref["aatype"].shape[0]):
        clusters, extra = _slice_rows(ref, s, lookup)
        rest = np.setdiff1d(np.arange(num_seq), np.concatenate([clusters, extra]))
        sample = fp.MsaSample(
            cluster_rows=clusters,
            extra_rows=np.concatenate([extra, rest]),
            bert_mask=ref["bert_mask"][s].astype(bool),
            bert_values=np.argmax(ref["msa_feat"][s][..., :23], axis=-1),
        )
        got = fp.ensembled_features(feats, cfg, sample)
        assert sorted(got) == sorted(ref)
        for k in got:
            if k != "random_crop_to_size_seed":
                np.testing.assert_array_equal(got[k], ref[k][s], err_msg=f"{k} slice {s}")


# ---------------------------------------------------------------------------
# Sampled features: invariants (validated on the reference too)
# ---------------------------------------------------------------------------
def test_reference_satisfies_invariants(ref, raw_rows):
    for s in range(ref["aatype"].shape[0]):
        _check_slice_invariants(ref, s, raw_rows)


def test_output_satisfies_invariants(out, raw_rows):
    for s in range(out["aatype"].shape[0]):
        clusters, extra = _check_slice_invariants(out, s, raw_rows)
        assert clusters.size == 8 and extra.size == 16  # 40 rows: 8 + 32 -> crop 16


def test_partition_when_not_truncated(raw, raw_rows):
    msa, dels, _ = raw_rows
    cfg = model_config("model_1_ptm", **{**REF_OVERRIDES, "max_extra_msa": 48})
    out = fp.process_features(raw, cfg, seed=3)
    assert out["extra_msa"].shape == (2, 48, 37)
    for s in range(2):
        clusters, extra = _check_slice_invariants(out, s, raw_rows)
        np.testing.assert_array_equal(np.sort(np.concatenate([clusters, extra])), np.arange(msa.shape[0]))
        # The multiset of (sequence, deletion pattern) pairs is the raw MSA's.
        got = sorted(
            (bytes(out["true_msa"][s][i].astype(np.int32)), out["msa_feat"][s][i, :, 24].tobytes()) for i in range(8)
        )
        got += sorted(
            (bytes(out["extra_msa"][s][i].astype(np.int32)), out["extra_deletion_value"][s][i].tobytes())
            for i in range(32)
        )
        want = [
            (bytes(msa[i].astype(np.int32)), fp._deletion_transform(dels[i]).tobytes()) for i in range(msa.shape[0])
        ]
        assert sorted(got) == sorted(want)
        # Padding rows are zero and masked out.
        assert not out["extra_msa_row_mask"][s][32:].any()
        assert not out["extra_msa_mask"][s][32:].any()
        assert not out["extra_msa"][s][32:].any()


def test_reference_rows_match_raw_deletion_patterns(ref, raw_rows):
    """DeepMind's sampled rows carry exactly the raw rows' deletion features."""
    msa, dels, _ = raw_rows
    raw_pairs = {
        (bytes(msa[i].astype(np.int32)), fp._deletion_transform(dels[i]).tobytes()) for i in range(msa.shape[0])
    }
    for s in range(ref["aatype"].shape[0]):
        pairs = [(bytes(ref["true_msa"][s][i]), ref["msa_feat"][s][i, :, 24].tobytes()) for i in range(8)]
        pairs += [(bytes(ref["extra_msa"][s][i]), ref["extra_deletion_value"][s][i].tobytes()) for i in range(16)]
        assert len(set(pairs)) == len(pairs)
        assert set(pairs) <= raw_pairs


def test_bert_masking_statistics(raw, ref):
    cfg8 = model_config("model_1_ptm", **{**REF_OVERRIDES, "num_recycle": 15})
    out = fp.process_features(raw, cfg8, seed=5)
    bm = out["bert_mask"].astype(bool)
    assert bm.shape == (16, 8, 37)
    frac = bm.mean()
    assert 0.13 < frac < 0.17, frac  # replace_fraction 0.15; 4736 positions
    assert 0.05 < ref["bert_mask"].mean() < 0.25
    bert_msa = np.argmax(out["msa_feat"][..., :23], axis=-1)
    true = out["true_msa"]
    # Masked positions: ~70% [MASK] (22); ~10% keep (same) + profile/uniform hits.
    is_mask_token = bert_msa[bm] == 22
    assert 0.62 < is_mask_token.mean() < 0.78, is_mask_token.mean()
    assert (bert_msa[~bm] == true[~bm]).all()
    assert (bert_msa[~bm] != 22).all()
    changed = (bert_msa[bm] != true[bm]) & ~is_mask_token
    assert 0.03 < changed.mean() < 0.3


def test_slices_differ_and_seeds(raw, cfg, out):
    np.testing.assert_raises(AssertionError, np.testing.assert_array_equal, out["true_msa"][0], out["true_msa"][1])
    again = fp.process_features(raw, cfg, seed=0)
    for k in out:
        np.testing.assert_array_equal(again[k], out[k], err_msg=k)
    other = fp.process_features(raw, cfg, seed=1)
    assert not np.array_equal(other["true_msa"], out["true_msa"])
    assert not np.array_equal(other["bert_mask"], out["bert_mask"])
    assert not np.array_equal(other["random_crop_to_size_seed"], out["random_crop_to_size_seed"])
    for k in EXACT_KEYS:
        np.testing.assert_array_equal(other[k], out[k], err_msg=k)


# ---------------------------------------------------------------------------
# Config variants and edge cases
# ---------------------------------------------------------------------------
def test_residue_padding(raw, cfg, out):
    padded = fp.process_features(raw, cfg, seed=0, num_res=45)
    assert padded["msa_feat"].shape == (2, 8, 45, 49)
    assert padded["template_all_atom_positions"].shape == (2, 4, 45, 37, 3)
    np.testing.assert_array_equal(padded["seq_length"], [37, 37])
    assert not padded["seq_mask"][:, 37:].any() and not padded["msa_mask"][..., 37:].any()
    for k, v in out.items():
        schema = fp.FEATURE_SCHEMA[k]
        idx = tuple(slice(0, 37) if d == fp.NUM_RES else slice(None) for d in schema)
        np.testing.assert_array_equal(padded[k][(slice(None),) + idx], v, err_msg=k)
    with pytest.raises(ValueError, match="smaller than the sequence length"):
        fp.process_features(raw, cfg, seed=0, num_res=30)


def test_without_templates(raw):
    cfg = model_config("model_3", num_recycle=0, max_extra_msa=16, max_msa_clusters=12)
    out = fp.process_features(raw, cfg, seed=0)
    assert not any(k.startswith("template_") for k in out)
    assert out["msa_feat"].shape == (1, 12, 37, 49)  # no reduction by max_templates
    np.testing.assert_array_equal(out["msa_row_mask"], 1.0)


def test_no_resampling_and_ensembling(raw):
    cfg = model_config("model_1_ptm", **{**REF_OVERRIDES, "resample_msa_in_recycling": False})
    assert fp.process_features(raw, cfg, seed=0)["msa_feat"].shape[0] == 1
    cfg = model_config("model_1_ptm", **{**REF_OVERRIDES, "data.eval.num_ensemble": 2})
    assert fp.process_features(raw, cfg, seed=0)["msa_feat"].shape[0] == 4


def test_single_sequence_and_no_template_hits(raw, cfg):
    small = dict(raw)
    small["msa"] = raw["msa"][:1]
    small["deletion_matrix_int"] = raw["deletion_matrix_int"][:1]
    small["num_alignments"] = np.ones_like(raw["num_alignments"])
    for k in (
        "template_aatype",
        "template_all_atom_masks",
        "template_all_atom_positions",
        "template_sum_probs",
        "template_domain_names",
    ):
        small[k] = raw[k][:0]
    out = fp.process_features(small, cfg, seed=0)
    np.testing.assert_array_equal(out["msa_row_mask"][:, 1:], 0)
    np.testing.assert_array_equal(out["extra_msa_row_mask"], 0)
    np.testing.assert_array_equal(out["template_mask"], 0)
    assert out["template_all_atom_positions"].shape == (2, 4, 37, 37, 3)
    profile = out["msa_feat"][:, 0, :, 25:48]
    np.testing.assert_allclose(profile, out["msa_feat"][:, 0, :, :23], rtol=2e-6)
    assert not out["msa_feat"][:, 1:].any()


def test_subsample_templates_uses_crop_seed(raw):
    cfg = model_config("model_1_ptm", **{**REF_OVERRIDES, "data.eval.subsample_templates": True})
    out = fp.process_features(raw, cfg, seed=0)
    np.testing.assert_array_equal(out["template_mask"][0], out["template_mask"][1])


@pytest.mark.parametrize(
    "mutate, error, match",
    [
        (
            lambda r: r.update(msa=r["msa"][:, :30], deletion_matrix_int=r["deletion_matrix_int"][:, :30]),
            ValueError,
            "MSA width 30 != sequence length 37",
        ),
        (lambda r: r.update(deletion_matrix_int=r["deletion_matrix_int"][:5]), ValueError, "deletion_matrix_int"),
        (lambda r: r.update(num_alignments=r["num_alignments"] + 1), ValueError, "num_alignments"),
        (lambda r: r.update(aatype=r["aatype"][:, :20]), ValueError, "aatype"),
        (lambda r: r.update(msa=r["msa"] + 5), ValueError, r"'msa' values must lie in \[0, 21\]"),
        (
            lambda r: r.update(template_all_atom_positions=r["template_all_atom_positions"][:, :10]),
            ValueError,
            "template_all_atom_positions",
        ),
        (lambda r: r.pop("msa"), KeyError, "lack"),
        (lambda r: r.pop("template_aatype"), KeyError, "use_templates"),
    ],
)
def test_clear_errors(raw, cfg, mutate, error, match):
    bad = dict(raw)
    mutate(bad)
    with pytest.raises(error, match=match):
        fp.process_features(bad, cfg, seed=0)


def test_config_errors(raw):
    cfg = model_config("model_1_ptm", **{**REF_OVERRIDES, "model.num_recycle": 3})
    with pytest.raises(ValueError, match="num_recycle"):
        fp.process_features(raw, cfg, seed=0)
    cfg = model_config("model_1_ptm", **{**REF_OVERRIDES, "max_msa_clusters": 4})
    with pytest.raises(ValueError, match="max_msa_clusters"):
        fp.process_features(raw, cfg, seed=0)
    with pytest.raises(TypeError, match="config"):
        fp.process_features(raw, {"model": {}}, seed=0)
