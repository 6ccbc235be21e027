"""Length buckets (jaxfold.data.buckets): the rule, feature padding, output cutting, and that padding
changes no prediction beyond round-off (tiny preset on a real chain; DeepMind's reference model)."""

from __future__ import annotations

import numpy as np
import pytest

from jaxfold.config import model_config
from jaxfold.data.buckets import bucket_length, group_by_bucket, pad_features, unpad_outputs
from jaxfold.data.feature_processing import process_features


def test_bucket_rule():
    cases = {
        1: 32,
        32: 32,
        33: 64,
        50: 64,
        400: 416,
        512: 512,
        513: 576,
        1000: 1024,
        1024: 1024,
        1025: 1152,
        2700: 2816,
    }
    assert {n: bucket_length(n) for n in cases} == cases
    assert bucket_length(397, "none") == 397
    lengths = list(range(50, 401, 7))
    assert len({bucket_length(n) for n in lengths}) == 12  # 64, 96, ..., 416
    assert all(0 <= bucket_length(n) - n < 32 for n in lengths)
    with pytest.raises(ValueError, match="at least one residue"):
        bucket_length(0)
    with pytest.raises(ValueError, match="'auto' or 'none'"):
        bucket_length(10, "pow2")


def test_group_by_bucket_sorts_by_length():
    groups = group_by_bucket([100, 40, 33, 64, 130, 99])
    assert groups == {64: [2, 1, 3], 128: [5, 0], 160: [4]}
    assert list(group_by_bucket([5, 3], "none")) == [3, 5]


@pytest.fixture(scope="module")
def tiny_chain(shared_dir):
    """Raw features of the real chain 1psm_A (38 residues) with its real MSAs."""
    from jaxfold.data.parsers import read_fasta
    from jaxfold.data.pipeline import build_raw_features

    record = read_fasta(shared_dir / "data/seqs/1psm_A.fasta")[0]
    return build_raw_features(record, msa_mode="precomputed", msa_dir=shared_dir / "data/msas")


def test_pad_features_equals_processing_at_the_padded_size(tiny_chain):
    cfg = model_config("tiny")
    plain = process_features(tiny_chain, cfg, seed=3)
    n = plain["aatype"].shape[1]
    padded = pad_features(plain, bucket_length(n))
    expected = process_features(tiny_chain, cfg, seed=3, num_res=bucket_length(n))
    assert set(padded) == set(expected)
    for key in expected:
        np.testing.assert_array_equal(padded[key], expected[key], err_msg=key)
    assert padded["seq_mask"][:, n:].sum() == 0 and padded["msa_mask"][:, :, n:].sum() == 0
    assert int(padded["seq_length"][0]) == n
    assert pad_features(plain, n)["msa_feat"].shape == plain["msa_feat"].shape


def test_pad_features_errors(tiny_chain):
    feats = process_features(tiny_chain, model_config("tiny"), seed=0)
    with pytest.raises(ValueError, match="padding never crops"):
        pad_features(feats, 10)
    with pytest.raises(ValueError, match="unknown feature 'asym_id'"):
        pad_features({**feats, "asym_id": feats["aatype"]}, 64)
    with pytest.raises(ValueError, match="target_feat has 37 residues"):
        pad_features({**feats, "target_feat": feats["target_feat"][:, :37]}, 64)
    with pytest.raises(ValueError, match=r"aatype must be \[num_slices, N_res\]"):
        pad_features({**feats, "aatype": feats["aatype"][0]}, 64)


def test_unpad_outputs_errors():
    with pytest.raises(ValueError, match="unknown output 'foo/bar'"):
        unpad_outputs({"foo/bar": np.zeros(3)}, 2)
    with pytest.raises(ValueError, match="cannot cut outputs of 4 residues to length 5"):
        unpad_outputs({"representations/single": np.zeros((4, 2))}, 5)
    with pytest.raises(ValueError, match="has 3 residues on axis 1, other outputs 4"):
        unpad_outputs({"representations/single": np.zeros((4, 2)), "representations/pair": np.zeros((4, 3, 2))}, 2)


def _assert_same_prediction(padded: dict, plain: dict, atol: dict[str, float]):
    assert set(padded) == set(plain)
    for key, expected in plain.items():
        got = padded[key]
        assert got.shape == expected.shape, key
        tol = next((v for k, v in atol.items() if key.startswith(k)), 1e-4)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=tol, err_msg=key)


def test_padding_does_not_change_a_tiny_prediction(tiny_chain):
    """1psm_A (38 residues) padded to its 64 bucket through run_alphafold, tiny preset, random parameters."""
    from jaxfold.model import run_alphafold
    from jaxfold.model_params import init_random_params

    cfg = model_config("tiny", num_recycle=1)
    params = init_random_params(cfg, seed=0)
    feats = process_features(tiny_chain, cfg, seed=0)
    n = feats["aatype"].shape[1]
    plain = run_alphafold(cfg, params, feats)
    padded_raw = run_alphafold(cfg, params, pad_features(feats, bucket_length(n)))
    assert padded_raw["structure_module/final_atom_positions"].shape[0] == 64
    padded = unpad_outputs(padded_raw, n)
    _assert_same_prediction(padded, plain, {"structure_module/": 1e-3, "confidence/": 1e-3, "confidence/ptm": 1e-5})
    # pTM must be recomputed on the true residues: on the padded logits it is a different number.
    stale = unpad_outputs({k: v for k, v in padded_raw.items() if not k.startswith("predicted_")}, n)
    assert abs(float(stale["confidence/ptm"]) - float(plain["confidence/ptm"])) > 1e-3


def test_padding_reproduces_deepmind_reference(shared_dir):
    """DeepMind's reference model (shrunk model_1_ptm, its parameters) on the reference features padded
    from 37 to 64 residues, cut back: DeepMind's unpadded outputs within the reference tolerances."""
    from test_alphafold_reference import SHRINK, compare_all, reference

    from jaxfold.model import run_alphafold
    from jaxfold.weights import load_alphafold_params

    cfg = model_config("model_1_ptm", num_recycle=0, **SHRINK)
    params = load_alphafold_params(shared_dir / "reference/params/params_model_1_ptm_shrunk.npz", cfg)
    feats = {k: v[:1] for k, v in reference(shared_dir, "features").items()}
    n = feats["aatype"].shape[1]
    out = unpad_outputs(run_alphafold(cfg, params, pad_features(feats, bucket_length(n))), n)
    errors = compare_all(out, reference(shared_dir, "outputs_recycle0"))
    assert len(errors) == 41
