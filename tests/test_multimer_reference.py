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
from reference_utils import assert_close_on

from jaxfold.config import model_config
from jaxfold.model import run_alphafold
from jaxfold.model.alphafold_multimer import (
    MSA_FEATURES,
    AlphaFoldIterationMultimer,
    ca_distance_change,
    continue_recycling,
    haiku_rng_key,
    prepare_batch,
    split_pass_key,
)
from jaxfold.model.msa_sampling import deepmind_keys, process_msa
from jaxfold.weights import load_alphafold_params, read_npz, save_alphafold_params

ATOL_ACT = 1e-4  # representations, captured activations, logits, recycled msa_first_row/pair
ATOL_POS = 1e-3  # positions, traj, final rigids, sidechain atoms/frames, recycled prev_pos (Angstrom)
ATOL_SINCOS = 5e-4
ATOL_CONF = 1e-3  # pLDDT (0-100), PAE (Angstrom)
ATOL_SCORE = 1e-5  # pTM, ipTM, ranking confidence
ATOL_BATCH = 1e-6  # msa_profile, cluster_*, msa_feat, extra_msa_feat


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
    return {
        "base": base,
        "manifest": manifest,
        "config": config,
        "params": params,
        "features": features,
        "passes": passes,
        "outputs": outputs,
    }


def test_params_every_key_maps_and_round_trips(ref, tmp_path):
    path = ref["base"] / ref["manifest"]["params_file"]
    original = read_npz(path)
    copy = tmp_path / "params.npz"
    save_alphafold_params(ref["params"], copy)
    again = read_npz(copy)
    assert sorted(again) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(again[key], value, err_msg=key)


def test_pass_keys_from_prngkey0(ref):
    """The model's key schedule from the apply key PRNGKey(0) gives DeepMind's per-pass keys."""
    recorded = ref["passes"]["iteration_input/key"]
    key = haiku_rng_key(jax.random.PRNGKey(0))
    with deepmind_keys():
        for k in range(recorded.shape[0] - 1):  # recycling passes, then the last pass takes the carried key
            key, pass_key = split_pass_key(key)
            np.testing.assert_array_equal(np.asarray(pass_key), recorded[k], err_msg=f"pass {k}")
    np.testing.assert_array_equal(np.asarray(key), recorded[-1], err_msg="last pass")


def test_early_stop_criterion(ref):
    """The C-alpha distance change between passes equals DeepMind's (manifest checks), and the recycling
    condition stops exactly when it falls to the tolerance or the passes run out."""
    passes, outputs = ref["passes"], ref["outputs"]
    seq_mask = jnp.asarray(ref["features"]["seq_mask"])
    positions = [
        passes["iteration_input/prev_pos"][0],
        passes["iteration_input/prev_pos"][1],
        outputs["structure_module/final_atom_positions"],
    ]
    expected = ref["manifest"]["checks"]["early_stop_rms_ca_distance_change_per_iteration"]
    for k, value in enumerate(expected):
        got = float(ca_distance_change(jnp.asarray(positions[k]), jnp.asarray(positions[k + 1]), seq_mask))
        assert abs(got - value) <= 1e-3, (k, got, value)
    prev, nxt = jnp.asarray(positions[1]), jnp.asarray(positions[2])  # change 6.1 A
    assert bool(continue_recycling(2, prev, nxt, seq_mask, 20, 0.5))
    assert not bool(continue_recycling(2, prev, nxt, seq_mask, 20, 7.0))
    assert not bool(continue_recycling(2, prev, nxt, seq_mask, 2, 0.5))
    assert bool(continue_recycling(0, prev, prev, seq_mask, 20, 0.5))  # the first pass always runs


@pytest.mark.parametrize("k", [0, 1])
def test_msa_sampling_per_pass(ref, k):
    """From pass k's recorded key: the sample/mask keys, the permutation, and the sampled, masked batch."""
    passes, config = ref["passes"], ref["config"]
    pass_key = jnp.asarray(passes["iteration_input/key"][k])
    with deepmind_keys():
        embedding_key = jax.random.split(pass_key)[1]
        batch, info = jax.jit(lambda key, b: process_msa(key, b, config.model.embeddings_and_evoformer))(
            embedding_key, prepare_batch(ref["features"])
        )
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
        np.testing.assert_array_equal(
            np.asarray(batch[key])[:num_extra], passes[f"sample_msa/output/{key}"][k][:num_extra], err_msg=key
        )
    for key, got in (
        ("msa_profile/msa_profile", batch["msa_profile"]),
        ("clusters/cluster_profile", batch["cluster_profile"]),
        ("clusters/cluster_deletion_mean", batch["cluster_deletion_mean"]),
        ("msa_feat/msa_feat", batch["msa_feat"]),
        ("extra_msa_feat/extra_msa_feat", batch["extra_msa_feat"]),
        ("extra_msa_feat/extra_msa_mask", batch["extra_msa_mask"]),
    ):
        assert_close_on(got, passes[key][k], None, ATOL_BATCH, what=key)


# Output keys compared at the position tolerance (Angstrom) and at the sin/cos one; the rest at ATOL_ACT.
POSITION_KEYS = (
    "structure_module/final_atom_positions",
    "structure_module/final_atom14_positions",
    "structure_module/sidechains/atom_pos",
)
SINCOS_KEYS = ("structure_module/sidechains/angles_sin_cos", "structure_module/sidechains/unnormalized_angles_sin_cos")
RIGID_KEYS = ("structure_module/traj", "structure_module/final_rigids", "structure_module/sidechains/frames")


def compare_outputs(flat: dict, expected: dict) -> list[str]:
    """Compare every reference key our outputs have (model outputs and confidences); returns the keys compared."""
    compared = []
    for key, value in expected.items():
        if key.startswith("captured/") or key not in flat:
            continue
        got = np.asarray(flat[key])
        if key in RIGID_KEYS:
            assert_close_on(got[..., :3], value[..., :3], None, ATOL_ACT, what=f"{key} rotation")
            assert_close_on(got[..., 3], value[..., 3], None, ATOL_POS, what=f"{key} translation")
        elif key in POSITION_KEYS:
            assert_close_on(got, value, None, ATOL_POS, what=key)
        elif key in SINCOS_KEYS:
            assert_close_on(got, value, None, ATOL_SINCOS, what=key)
        elif key in (
            "confidence/plddt",
            "confidence/predicted_aligned_error",
            "confidence/max_predicted_aligned_error",
        ):
            assert_close_on(got, value, None, ATOL_CONF, what=key)
        elif key in ("confidence/ptm", "confidence/iptm", "confidence/ranking_confidence"):
            assert_close_on(got, value, None, ATOL_SCORE, what=key)
        elif value.dtype.kind in "iub" or key.endswith("_mask") or key == "num_recycles":
            np.testing.assert_array_equal(got, value, err_msg=key)
        else:
            assert_close_on(got, value, None, ATOL_ACT, what=key)
        compared.append(key)
    return compared


def compare_captured(inter: dict, expected: dict) -> None:
    """The final pass's module-boundary activations (`captured/*` of outputs.npz); `inter` is the trunk's
    (`evoformer`) sown `intermediates`."""
    pairs = {
        "captured/relative_encoding/output": inter["relative_encoding/output"][0],
        "captured/template_embedding/output": inter["template_embedding/output"][0],
        "captured/template_single/activations": inter["template_single"][0][0],
        "captured/template_single/mask": inter["template_single"][0][1],
        "captured/extra_msa_stack/input/msa": inter["extra_msa_stack/input"][0][0],
        "captured/extra_msa_stack/input/pair": inter["extra_msa_stack/input"][0][1],
        "captured/extra_msa_stack/output/pair": inter["extra_msa_stack/output"][0],
        "captured/evoformer_stack/input/msa": inter["evoformer_stack/input"][0][0],
        "captured/evoformer_stack/msa_mask": inter["evoformer_stack/input"][0][2],
        "captured/evoformer_stack/output/msa": inter["evoformer_stack/output"][0],
    }
    for key, got in pairs.items():
        assert_close_on(got, expected[key], None, ATOL_ACT, what=key)


@pytest.fixture(scope="module")
def network(ref):
    """One pass of the network on a recorded sampled batch (no key), jit-compiled once for both passes."""
    model = AlphaFoldIterationMultimer(ref["config"].model)

    @jax.jit
    def apply(params, batch):
        return model.apply({"params": params}, batch, None, True, mutable=["intermediates"])

    def run(k: int):
        passes = ref["passes"]
        batch = {key: value for key, value in prepare_batch(ref["features"]).items() if key not in MSA_FEATURES}
        batch.update(
            msa_feat=passes["msa_feat/msa_feat"][k],
            msa_mask=passes["sample_msa/output/msa_mask"][k],
            extra_msa_feat=passes["extra_msa_feat/extra_msa_feat"][k],
            extra_msa_mask=passes["extra_msa_feat/extra_msa_mask"][k],
            **{name: passes[f"iteration_input/{name}"][k] for name in ("prev_pos", "prev_msa_first_row", "prev_pair")},
        )
        return apply(ref["params"]["alphafold_iteration"], {k2: jnp.asarray(v) for k2, v in batch.items()})

    return run


def test_network_pass_0(ref, network):
    """Pass 0 on its recorded batch -> the recycling inputs DeepMind's pass 1 received."""
    out, _ = network(0)
    passes = ref["passes"]
    assert_close_on(
        out["structure_module"]["final_atom_positions"],
        passes["iteration_input/prev_pos"][1],
        None,
        ATOL_POS,
        what="prev_pos",
    )
    assert_close_on(
        out["representations"]["msa_first_row"],
        passes["iteration_input/prev_msa_first_row"][1],
        None,
        ATOL_ACT,
        what="prev_msa_first_row",
    )
    assert_close_on(
        out["representations"]["pair"], passes["iteration_input/prev_pair"][1], None, ATOL_ACT, what="prev_pair"
    )


def test_network_pass_1(ref, network):
    """Pass 1 (the last) on its recorded batch and recycling inputs -> outputs.npz, captured activations too."""
    from jaxfold.model import flat_outputs  # noqa: PLC0415

    out, state = network(1)
    flat = flat_outputs(jax.tree_util.tree_map(np.asarray, out), multimer_mode=True)
    compared = compare_outputs(flat, ref["outputs"])
    assert "confidence/iptm" in compared and "structure_module/traj" in compared
    compare_captured(state["intermediates"]["evoformer"], ref["outputs"])


def test_whole_model_from_prngkey0(ref):
    """`run_alphafold` on features.npz with PRNGKey(0): sampling, recycling (with the early-stop check) and
    the last pass, against outputs.npz."""
    flat = run_alphafold(ref["config"], ref["params"], ref["features"], rng=jax.random.PRNGKey(0))
    assert int(flat["num_recycles"]) == int(ref["outputs"]["num_recycles"]) == 1
    compared = compare_outputs(flat, ref["outputs"])
    missing = sorted(k for k in ref["outputs"] if not k.startswith("captured/") and k not in flat)
    assert not missing, f"outputs DeepMind's model returns that run_alphafold lacks: {missing}"
    assert len(compared) == sum(not k.startswith("captured/") for k in ref["outputs"])


@pytest.mark.slow
def test_bfloat16_is_as_close_to_fp32_as_deepminds_bfloat16(ref):
    """With the shipped precision (`global_config.bfloat16 = True`) the outputs stay within 3x the distance
    between DeepMind's own bf16 and fp32 runs (manifest `checks.bfloat16_true_vs_fp32_max_abs_diff`; measured
    here: pair 1.64 vs 1.69, positions 0.45 vs 0.38 A, pLDDT 0.031 vs 0.027, pTM 6.6e-4 vs 2.7e-4)."""
    overrides = dict(ref["manifest"]["overrides"], **{"model.global_config.bfloat16": True})
    config = model_config("model_1_multimer_v3", **overrides)
    assert config.model.global_config.dtype == "bfloat16"
    flat = run_alphafold(config, ref["params"], ref["features"], rng=jax.random.PRNGKey(0))
    deepmind = ref["manifest"]["checks"]["bfloat16_true_vs_fp32_max_abs_diff"]
    for key, check in (
        ("representations/pair", "representations/pair"),
        ("representations/single", "representations/single"),
        ("distogram/logits", "distogram_logits"),
        ("structure_module/final_atom_positions", "final_atom_positions_A"),
        ("confidence/plddt", "plddt"),
        ("confidence/ptm", "ptm"),
        ("confidence/iptm", "iptm"),
    ):
        err = float(np.abs(np.asarray(flat[key], np.float64) - ref["outputs"][key]).max())
        assert np.isfinite(err) and err <= 3 * deepmind[check], (
            f"{key}: bf16 off by {err:.3g}, DeepMind's bf16 by {deepmind[check]:.3g}"
        )
