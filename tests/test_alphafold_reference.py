"""The whole model (trunk, structure module, heads, recycling, confidences) against DeepMind's outputs.

Tolerances per output family from shared/reference/README.md; every key of the reference files is compared
(except the `captured/*` activations, covered by test_trunk_reference.py).
"""

import numpy as np
import pytest
from reference_utils import SHRINK, assert_close_on, compare_all, reference, tolerance

from jaxfold.config import model_config
from jaxfold.model import memory, run_alphafold
from jaxfold.model.predict import predict
from jaxfold.weights import load_alphafold_params


@pytest.fixture(scope="module")
def features(shared_dir):
    return reference(shared_dir, "features")


def run(shared_dir, features, num_recycle, **overrides):
    cfg = model_config("model_1_ptm", num_recycle=num_recycle, **SHRINK, **overrides)
    params = load_alphafold_params(shared_dir / "reference" / "params" / "params_model_1_ptm_shrunk.npz", cfg)
    feats = {k: v[: num_recycle + 1] for k, v in features.items()}
    return run_alphafold(cfg, params, feats)


@pytest.fixture(scope="module")
def first_pass(shared_dir, features):
    return run(shared_dir, features, num_recycle=0)


@pytest.fixture(scope="module")
def recycled(shared_dir, features):
    return run(shared_dir, features, num_recycle=1)


def test_first_pass_matches_deepmind(shared_dir, first_pass):
    errors = compare_all(first_pass, reference(shared_dir, "outputs_recycle0"))
    assert len(errors) == 41  # every non-captured output of DeepMind's model


def test_recycled_model_matches_deepmind(shared_dir, recycled):
    errors = compare_all(recycled, reference(shared_dir, "outputs"))
    assert len(errors) == 41


def test_recycling_outputs_feed_the_next_pass(shared_dir, first_pass):
    """What the first pass hands to recycling equals what DeepMind's model captured as recycling inputs."""
    captured = reference(shared_dir, "outputs")
    assert_close_on(
        first_pass["representations/pair"],
        captured["captured/recycling_inputs/prev_pair"],
        None,
        1e-4,
        what="prev_pair",
    )
    assert_close_on(
        first_pass["representations/msa_first_row"],
        captured["captured/recycling_inputs/prev_msa_first_row"],
        None,
        1e-4,
        what="prev_msa_first_row",
    )
    assert_close_on(
        first_pass["structure_module/final_atom_positions"],
        captured["captured/recycling_inputs/prev_pos"],
        None,
        1e-3,
        what="prev_pos",
    )


def test_same_input_twice_is_bit_identical(shared_dir, features, recycled):
    again = run(shared_dir, features, num_recycle=1)
    for key, value in recycled.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_runtime_recycling_count_caps_iterations(shared_dir, features, first_pass):
    """`num_iter_recycling` = 0 at run time with num_recycle=1 compiled: only one pass, on slice 0."""
    cfg = model_config("model_1_ptm", num_recycle=1, **SHRINK)
    params = load_alphafold_params(shared_dir / "reference" / "params" / "params_model_1_ptm_shrunk.npz", cfg)
    feats = dict(features, num_iter_recycling=np.zeros((2,), np.int32))
    out = run_alphafold(cfg, params, feats)
    np.testing.assert_allclose(
        out["structure_module/final_atom_positions"], first_pass["structure_module/final_atom_positions"], atol=1e-4
    )


def auto_budget_forcing_a_chunk(cfg, feats) -> int:
    """A (faked) free-memory figure between the estimated peaks of the unchunked and the 8-row run, so that
    `chunk_size="auto"` must choose a positive size."""
    shapes = memory.ModelShapes.from_features(feats, cfg)
    unchunked = memory.estimate_peak_bytes(shapes, cfg, 0, "xla")
    chunked = memory.estimate_peak_bytes(shapes, cfg, 8, "xla")
    assert chunked < unchunked
    return int((unchunked + chunked) / 2 / memory.DEFAULT_HEADROOM)


@pytest.fixture(scope="module")
def recycled_auto_chunked(shared_dir, features):
    """The recycled model with `chunk_size="auto"` on a device faked too small to run unchunked: chunked,
    in-place updates, lean outputs (what `infer.py` runs)."""
    cfg = model_config("model_1_ptm", num_recycle=1, **SHRINK)
    params = load_alphafold_params(shared_dir / "reference" / "params" / "params_model_1_ptm_shrunk.npz", cfg)
    feats = {k: v[:2] for k, v in features.items()}
    timings = {}
    out = predict(
        cfg,
        params,
        feats,
        chunk_size="auto",
        outputs="lean",
        timings=timings,
        budget_bytes=auto_budget_forcing_a_chunk(cfg, feats),
    )
    return out, timings["settings"], timings["compiled_bytes"]


def test_auto_chunked_in_place_lean_model_matches_deepmind(shared_dir, recycled_auto_chunked):
    out, settings, compiled = recycled_auto_chunked
    assert 0 < settings.chunk_size < 37  # 37 residues: the run really was chunked
    # XLA's account of both programs comes back with the timings (benchmarks set it beside the estimate).
    for program in ("iteration", "heads"):
        assert set(compiled[program]) == {"temp", "argument", "output", "alias"}
        assert compiled[program]["temp"] > 0 and compiled[program]["argument"] > 0
    assert compiled["iteration"]["alias"] > 0  # the recycled inputs are donated to the next pass
    ref = reference(shared_dir, "outputs")
    for key in (
        "structure_module/final_atom_positions",
        "structure_module/final_atom_mask",
        "confidence/plddt",
        "confidence/predicted_aligned_error",
        "confidence/max_predicted_aligned_error",
        "confidence/ptm",
        "confidence/ranking_confidence",
        "predicted_lddt/logits",
    ):
        assert_close_on(out[key], ref[key], None, tolerance(key), what=f"{key} (auto chunk, in place, lean)")
    # Lean outputs leave the N x N x 64 logits and the representations on the device.
    assert not any(k.startswith(("representations/", "distogram/", "predicted_aligned_error/")) for k in out)


def test_lean_confidences_equal_full_ones(recycled, recycled_auto_chunked):
    out, _, _ = recycled_auto_chunked
    for key in ("confidence/plddt", "confidence/predicted_aligned_error", "confidence/ptm"):
        np.testing.assert_allclose(out[key], recycled[key], rtol=1e-5, atol=2e-5, err_msg=key)
