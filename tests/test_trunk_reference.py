"""Embeddings + template embedding + extra-MSA stack + Evoformer stack on DeepMind's processed features,
against the activations DeepMind's model captured at each module boundary (shared/reference/outputs.npz)."""

import jax
import numpy as np
import pytest
from reference_utils import ATOL_FULL_ACTIVATIONS, assert_close_on

from jaxfold.config import model_config
from jaxfold.model.embeddings_and_evoformer import EmbeddingsAndEvoformer
from jaxfold.weights import flat_to_tree, read_npz

# The reference model: model_1_ptm shrunk in depth only (shared/reference/manifest.json).
SHRINK = dict(evoformer_num_block=2, extra_msa_stack_num_block=1, structure_module_num_layer=2, num_recycle=1)


def run_trunk(shared_dir, **overrides):
    ref = shared_dir / "reference"
    cfg = model_config("model_1_ptm", **SHRINK, **overrides)
    params = flat_to_tree(read_npz(ref / "params" / "params_model_1_ptm_shrunk.npz"))
    params = params["alphafold"]["alphafold_iteration"]["evoformer"]
    with np.load(ref / "features.npz") as f:
        batch = {k: f[k][1] for k in f.files}  # the final recycling iteration's MSA sample
    with np.load(ref / "outputs.npz") as o:
        outputs = {k: o[k] for k in o.files}
    for key in ("prev_pos", "prev_msa_first_row", "prev_pair"):
        batch[key] = outputs[f"captured/recycling_inputs/{key}"]
    module = EmbeddingsAndEvoformer(cfg.model.embeddings_and_evoformer, cfg.model.global_config)
    apply = jax.jit(lambda p, b: module.apply({"params": p}, b, mutable=["intermediates"]))
    result, state = apply(params, batch)
    return result, state["intermediates"], outputs, batch


@pytest.fixture(scope="module")
def fp32_trunk(shared_dir):
    return run_trunk(shared_dir)


def test_trunk_matches_deepmind_captures(fp32_trunk):
    result, inter, ref, batch = fp32_trunk
    seq = batch["seq_mask"] > 0
    pair_valid = (seq[:, None] & seq[None, :])[..., None]
    (msa_mask_captured,) = inter["evoformer_stack_input"][0][2:3]
    np.testing.assert_array_equal(msa_mask_captured, ref["captured/evoformer_stack/msa_mask"])
    msa_valid = (ref["captured/evoformer_stack/msa_mask"] > 0)[..., None]
    extra_valid = (batch["extra_msa_mask"] > 0)[..., None]
    checks = {
        "captured/template_embedding_output": (inter["template_embedding_output"][0], pair_valid),
        "captured/extra_msa_stack/input/msa": (inter["extra_msa_stack_input"][0][0], extra_valid),
        "captured/extra_msa_stack/input/pair": (inter["extra_msa_stack_input"][0][1], pair_valid),
        "captured/extra_msa_stack/output/msa": (inter["extra_msa_stack_output"][0][0], extra_valid),
        "captured/extra_msa_stack/output/pair": (inter["extra_msa_stack_output"][0][1], pair_valid),
        "captured/evoformer_stack/input/msa": (inter["evoformer_stack_input"][0][0], msa_valid),
        "captured/evoformer_stack/input/pair": (inter["evoformer_stack_input"][0][1], pair_valid),
        "captured/evoformer_stack/output/msa": (inter["evoformer_stack_output"][0][0], msa_valid),
        "captured/evoformer_stack/output/pair": (inter["evoformer_stack_output"][0][1], pair_valid),
        "representations/single": (result["single"], seq[:, None]),
        "representations/pair": (result["pair"], pair_valid),
        "representations/msa": (result["msa"], msa_valid[: result["msa"].shape[0]]),
        "representations/msa_first_row": (result["msa_first_row"], seq[:, None]),
    }
    for key, (actual, valid) in checks.items():
        assert_close_on(actual, ref[key], valid, ATOL_FULL_ACTIVATIONS, what=key)


def test_trunk_in_bfloat16_stays_close_to_float32(shared_dir, fp32_trunk):
    """bf16 activations (8 mantissa bits) through 2+1 blocks: bounded relative deviation, finite values."""
    result16, _, _, _ = run_trunk(shared_dir, dtype="bfloat16")
    result32 = fp32_trunk[0]
    for key in ("single", "pair", "msa"):
        a, b = np.asarray(result16[key], np.float32), np.asarray(result32[key])
        assert np.isfinite(a).all(), key
        rel = np.linalg.norm(a - b) / np.linalg.norm(b)
        assert rel < 0.03, f"{key}: bf16 relative deviation {rel:.4f} (bound 0.03)"
        assert rel > 0.0, f"{key}: bf16 run identical to fp32, so bf16 was not actually used"
