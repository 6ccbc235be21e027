"""Prediction heads and confidence metrics against DeepMind's own outputs (shared/reference).

`modules/heads` holds the five heads' parameters and outputs on random representations (23 residues, the
last 2 padding) plus `output/confidence/*` computed by AlphaFold's `get_confidence_metrics`; `outputs.npz`
holds the full model's logits and confidence metrics.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from reference_utils import ATOL_TRUNK, assert_close_on, module_reference

from jaxfold.config import model_config
from jaxfold.model import confidence
from jaxfold.model.heads import HEADS
from jaxfold.weights import tree_to_flat

CONFIG = model_config("model_1_ptm")
GC = CONFIG.model.global_config
NUM_VALID = 21  # of 23 residues
ATOL_CONFIDENCE = 1e-3  # pLDDT and PAE, as the full model
ATOL_PTM = 1e-5


@pytest.fixture(scope="module")
def heads_reference(shared_dir):
    io, params = module_reference(shared_dir, "heads")
    representations = {k[len("input/") :]: v for k, v in io.items() if k.startswith("input/")}
    return io, params, representations


@pytest.fixture(scope="module")
def head_outputs(heads_reference):
    _, params, representations = heads_reference
    return {
        key: jax.device_get(cls(CONFIG.model.heads[key], GC).apply({"params": params[name]}, representations))
        for key, (cls, name) in HEADS.items()
    }


def valid_mask(head: str, shape) -> np.ndarray:
    """Valid residues: pair heads [N, N, ...], masked MSA [S, N, ...], per-residue heads [N, ...]."""
    valid = np.arange(23) < NUM_VALID
    if head in ("distogram", "predicted_aligned_error"):
        mask = valid[:, None] & valid[None, :]
    elif head == "masked_msa":
        mask = np.broadcast_to(valid[None, :], shape[:2])
    else:
        mask = valid
    return mask.reshape(mask.shape + (1,) * (len(shape) - mask.ndim))


HEAD_OUTPUTS = [
    ("distogram", "logits"),
    ("distogram", "bin_edges"),
    ("masked_msa", "logits"),
    ("predicted_lddt", "logits"),
    ("experimentally_resolved", "logits"),
    ("predicted_aligned_error", "logits"),
    ("predicted_aligned_error", "breaks"),
]


@pytest.mark.parametrize("head,key", HEAD_OUTPUTS)
def test_head_matches_deepmind(heads_reference, head_outputs, head, key):
    io, _, _ = heads_reference
    expected = io[f"output/{head}/{key}"]
    actual = np.asarray(head_outputs[head][key])
    valid = None if key in ("bin_edges", "breaks") else valid_mask(head, expected.shape)
    assert_close_on(actual, expected, valid, ATOL_TRUNK, what=f"{head}/{key}")


def test_distogram_logits_are_symmetric(head_outputs):
    logits = np.asarray(head_outputs["distogram"]["logits"])
    np.testing.assert_array_equal(logits, np.swapaxes(logits, 0, 1))


@pytest.mark.parametrize("head", sorted(HEADS))
def test_head_params_match_official_layout(heads_reference, head):
    _, params, representations = heads_reference
    cls, name = HEADS[head]
    module = cls(CONFIG.model.heads[head], GC)
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), representations))
    ours = {k: tuple(v.shape) for k, v in tree_to_flat(shapes["params"]).items()}
    official = {k: tuple(v.shape) for k, v in tree_to_flat(params[name]).items()}
    assert ours == official


def test_zero_init_heads_start_at_zero(heads_reference):
    """With `zero_init` the final layers start at zero, as AlphaFold's `final_init`."""
    _, _, representations = heads_reference
    cls, _ = HEADS["predicted_aligned_error"]
    params = cls(CONFIG.model.heads.predicted_aligned_error, GC).init(jax.random.PRNGKey(0), representations)
    assert not np.any(np.asarray(params["params"]["logits"]["weights"]))


# ---------------------------------------------------------------------------------------------------------
# Confidence metrics.
# ---------------------------------------------------------------------------------------------------------


def test_confidence_metrics_match_deepmind_on_head_outputs(heads_reference, head_outputs):
    io, _, _ = heads_reference
    metrics = confidence.get_confidence_metrics(head_outputs)
    for key, atol in [
        ("plddt", ATOL_CONFIDENCE),
        ("aligned_confidence_probs", ATOL_TRUNK),
        ("predicted_aligned_error", ATOL_CONFIDENCE),
        ("max_predicted_aligned_error", 0.0),
        ("ptm", ATOL_PTM),
    ]:
        assert_close_on(metrics[key], io[f"output/confidence/{key}"], None, atol, what=key)
    np.testing.assert_allclose(metrics["ranking_confidence"], np.mean(metrics["plddt"]))


def test_confidence_functions_on_reference_logits(heads_reference):
    """From DeepMind's own logits the metrics agree to rounding (same operations, same dtypes; bit-equal
    with NumPy 2.4 on x86)."""
    io, _, _ = heads_reference
    np.testing.assert_allclose(
        confidence.compute_plddt(io["output/predicted_lddt/logits"]), io["output/confidence/plddt"], rtol=1e-6
    )
    pae = confidence.compute_predicted_aligned_error(
        io["output/predicted_aligned_error/logits"], io["output/predicted_aligned_error/breaks"]
    )
    for key, value in pae.items():
        np.testing.assert_allclose(value, io[f"output/confidence/{key}"], rtol=1e-6, atol=1e-9)
        assert np.asarray(value).dtype == io[f"output/confidence/{key}"].dtype
    ptm = confidence.predicted_tm_score(
        io["output/predicted_aligned_error/logits"], io["output/predicted_aligned_error/breaks"]
    )
    np.testing.assert_allclose(ptm, io["output/confidence/ptm"], rtol=0, atol=1e-9)


def test_confidence_metrics_match_full_model(shared_dir):
    """`get_confidence_metrics` on the full model's logits: monomer ranking = mean pLDDT, even for _ptm."""
    with np.load(shared_dir / "reference" / "outputs.npz") as data:
        ref = {k: data[k] for k in data.files}
    result = {
        "predicted_lddt": {"logits": ref["predicted_lddt/logits"]},
        "predicted_aligned_error": {
            "logits": ref["predicted_aligned_error/logits"],
            "breaks": ref["predicted_aligned_error/breaks"],
        },
    }
    metrics = confidence.get_confidence_metrics(result, multimer_mode=False)
    for key in (
        "plddt",
        "aligned_confidence_probs",
        "predicted_aligned_error",
        "max_predicted_aligned_error",
        "ptm",
        "ranking_confidence",
    ):
        np.testing.assert_allclose(metrics[key], ref[f"confidence/{key}"], rtol=1e-6, atol=1e-9, err_msg=key)


def test_predicted_tm_score_with_residue_weights(heads_reference):
    """Zero-weight (padding) residues are left out: same pTM as on the unpadded logits."""
    io, _, _ = heads_reference
    logits, breaks = io["output/predicted_aligned_error/logits"], io["output/predicted_aligned_error/breaks"]
    weights = (np.arange(23) < NUM_VALID).astype(np.float32)
    masked = confidence.predicted_tm_score(logits, breaks, residue_weights=weights)
    sliced = confidence.predicted_tm_score(logits[:NUM_VALID, :NUM_VALID], breaks)
    np.testing.assert_allclose(masked, sliced, rtol=1e-6)


def test_predicted_tm_score_interface():
    """ipTM only counts pairs across chains; with identical logits everywhere it equals pTM's TM term."""
    logits = np.zeros((30, 30, 64), np.float32)
    breaks = np.linspace(0.0, 31.0, 63).astype(np.float32)
    asym_id = np.repeat([1, 2], 15)
    ptm = confidence.predicted_tm_score(logits, breaks)
    iptm = confidence.predicted_tm_score(logits, breaks, asym_id=asym_id, interface=True)
    np.testing.assert_allclose(iptm, ptm, rtol=1e-5)
    metrics = confidence.get_confidence_metrics(
        {
            "predicted_lddt": {"logits": np.zeros((30, 50), np.float32)},
            "predicted_aligned_error": {"logits": logits, "breaks": breaks, "asym_id": asym_id},
        },
        multimer_mode=True,
    )
    np.testing.assert_allclose(metrics["ranking_confidence"], 0.8 * metrics["iptm"] + 0.2 * metrics["ptm"])


def test_plddt_bounds():
    logits = np.full((3, 50), -1e4, np.float32)
    logits[0, 0] = logits[1, -1] = 0.0
    logits[2] = 0.0
    plddt = confidence.compute_plddt(logits)
    np.testing.assert_allclose(plddt, [1.0, 99.0, 50.0], atol=1e-5)


def test_heads_on_full_model_representations(shared_dir):
    """The heads under the full model's parameter scope reproduce the full model's logits."""
    from jaxfold.weights import flat_to_tree, read_npz  # noqa: PLC0415

    ref_dir = shared_dir / "reference"
    params = flat_to_tree(read_npz(ref_dir / "params" / "params_model_1_ptm_shrunk.npz"))
    params = params["alphafold"]["alphafold_iteration"]
    with np.load(ref_dir / "outputs.npz") as data:
        ref = {k: data[k] for k in data.files if not k.startswith("captured/")}
    representations = {k[len("representations/") :]: v for k, v in ref.items() if k.startswith("representations/")}
    for key, (cls, name) in HEADS.items():
        out = cls(CONFIG.model.heads[key], GC).apply({"params": params[name]}, representations)
        assert_close_on(out["logits"], ref[f"{key}/logits"], None, 1e-4, what=f"full model {key}")
