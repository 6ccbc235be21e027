"""The whole AlphaFold-Multimer model against DeepMind's own outputs (shared/reference_multimer).

Order of the checks (README "How to use it"): the parameter file maps; the in-model MSA sampling per pass from
DeepMind's recorded keys; the network alone per pass on the recorded sampled batches; then the whole chain
from `PRNGKey(0)` through `run_alphafold`. Tolerances from the README (fp32, rtol 1e-4).
"""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxfold.config import model_config
from jaxfold.model.alphafold_multimer import AlphaFoldIterationMultimer, haiku_rng_key, prepare_batch
from jaxfold.model.msa_sampling import deepmind_keys, process_msa
from jaxfold.weights import load_alphafold_params, read_npz, save_alphafold_params
from reference_utils import assert_close_on

ATOL_ACT = 1e-4     # representations, captured activations, logits, recycled msa_first_row/pair
ATOL_POS = 1e-3     # positions, traj, final rigids, sidechain atoms/frames, recycled prev_pos (Angstrom)
ATOL_SINCOS = 5e-4
ATOL_CONF = 1e-3    # pLDDT (0-100), PAE (Angstrom)
ATOL_SCORE = 1e-5   # pTM, ipTM, ranking confidence
ATOL_BATCH = 1e-6   # msa_profile, cluster_*, msa_feat, extra_msa_feat


@pytest.fixture(scope="module")
def ref(shared_dir):
    base = shared_dir / "reference_multimer"
    if not base.is_dir():
        pytest.skip("shared/reference_multimer not available")
    manifest = json.loads((base / "manifest.json").read_text())
    config = model_config("model_1_multimer_v3", **manifest["overrides"])
    params = load_alphafold_params(base / manifest["params_file"], config)
    with np.load(base / "features.npz") as f:
        features = {k: f[k] for k in f.files}
    with np.load(base / "recycling_batches.npz") as f:
        passes = {k: f[k] for k in f.files}
    with np.load(base / "outputs.npz") as f:
        outputs = {k: f[k] for k in f.files}
    return {"base": base, "manifest": manifest, "config": config, "params": params, "features": features,
            "passes": passes, "outputs": outputs}


def test_params_every_key_maps_and_round_trips(ref, tmp_path):
    path = ref["base"] / ref["manifest"]["params_file"]
    original = read_npz(path)
    copy = tmp_path / "params.npz"
    save_alphafold_params(ref["params"], copy)
    again = read_npz(copy)
    assert sorted(again) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


@pytest.mark.parametrize("k", [0, 1])
def test_msa_sampling_per_pass(ref, k):
    """From pass k's recorded key: the sample/mask keys, the permutation, and the sampled, masked batch."""
    passes, config = ref["passes"], ref["config"]
    pass_key = jnp.asarray(passes["iteration_input/key"][k])
    with deepmind_keys():
        embedding_key = jax.random.split(pass_key)[1]
        batch, info = jax.jit(lambda key, b: process_msa(key, b, config.model.embeddings_and_evoformer))(
            embedding_key, prepare_batch(ref["features"]))
    np.testing.assert_array_equal(np.asarray(info["sample_key"]), passes["sample_msa/key/key"][k])
    np.testing.assert_array_equal(np.asarray(info["mask_key"]), passes["make_masked_msa/key/key"][k])
    logits = passes["sample_msa/index_order/logits"][k]
    assert_close_on(info["logits"], logits, None, 0.0, 0.0, what="sampling logits")
    order, ref_order = np.asarray(info["index_order"]), passes["sample_msa/index_order/index_order"][k]
    real = logits[ref_order] > -1e5
    np.testing.assert_array_equal(order[real], ref_order[real])
    np.testing.assert_array_equal(np.asarray(batch["true_msa"]), passes["sample_msa/output/msa"][k])
    np.testing.assert_array_equal(np.asarray(batch["deletion_matrix"]), passes["sample_msa/output/deletion_matrix"][k])
    np.testing.assert_array_equal(np.asarray(info["sampled_msa_mask"]), passes["sample_msa/output/msa_mask"][k])
    np.testing.assert_array_equal(np.asarray(batch["msa"]), passes["make_masked_msa/output/msa"][k])
    np.testing.assert_array_equal(np.asarray(batch["bert_mask"]), passes["make_masked_msa/output/bert_mask"][k])
    np.testing.assert_array_equal(np.asarray(batch["true_msa"]), passes["make_masked_msa/output/true_msa"][k])
    num_extra = config.model.embeddings_and_evoformer.num_extra_msa
    for key in ("extra_msa", "extra_deletion_matrix", "extra_bert_mask"):
        np.testing.assert_array_equal(np.asarray(batch[key])[:num_extra],
                                      passes[f"sample_msa/output/{key}"][k][:num_extra], err_msg=key)
    for key, got in (("msa_profile/msa_profile", batch["msa_profile"]),
                     ("clusters/cluster_profile", batch["cluster_profile"]),
                     ("clusters/cluster_deletion_mean", batch["cluster_deletion_mean"]),
                     ("msa_feat/msa_feat", batch["msa_feat"]),
                     ("extra_msa_feat/extra_msa_feat", batch["extra_msa_feat"]),
                     ("extra_msa_feat/extra_msa_mask", batch["extra_msa_mask"])):
        assert_close_on(got, passes[key][k], None, ATOL_BATCH, what=key)
