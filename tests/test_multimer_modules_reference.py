"""AlphaFold-Multimer modules against DeepMind's own outputs (shared/reference_multimer/modules).

Each module's parameters are slices of the full official-format parameter file, as the manifest's
`param_map` says; tolerances from shared/reference_multimer/README.md (fp32, rtol 1e-4). Module inputs pad
the last 2 of 18 residues (none for the heads and the relative encoding): only valid positions are compared.
"""

from __future__ import annotations

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from multimer_reference_utils import (
    ATOL_SM,
    ATOL_SM_POS,
    ATOL_TRUNK,
    CONFIG,
    EMB,
    GC,
    NUM_VALID,
    SM,
    valid_2d,
    valid_rows,
)
from reference_utils import assert_close_on

from jaxfold.common.geometry import Rigid, Rot3, Vec3
from jaxfold.config import ALPHAFOLD_KEYS_NOT_USED, model_config
from jaxfold.model.confidence import get_confidence_metrics
from jaxfold.model.evoformer import EvoformerIteration
from jaxfold.model.heads import HEADS
from jaxfold.model.relative_encoding import RelativeEncoding
from jaxfold.model.structure_module_multimer import (
    FoldIterationMultimer,
    InvariantPointAttentionMultimer,
    StructureModuleMultimer,
)
from jaxfold.model.template_multimer import TemplateEmbedding, template_embedding_1d
from jaxfold.model.triangle_multiplication import TriangleMultiplication


def rigid_input(io) -> Rigid:
    return Rigid(
        Rot3.from_array(jnp.asarray(io["input/rotation"])), Vec3.from_array(jnp.asarray(io["input/translation"]))
    )


def test_config_loads_reference_overrides(shared_dir):
    manifest = json.loads((shared_dir / "reference_multimer" / "manifest.json").read_text())
    cfg = model_config("model_1_multimer_v3", **manifest["overrides"])
    assert cfg.model.global_config.dtype == "float32"
    assert cfg.model.global_config.multimer_mode
    shipped = model_config("model_1_multimer_v3")
    for key, value in manifest["shipped_values_of_overridden_keys"].items():
        if key != "model.global_config.bfloat16":
            assert shipped[key] == value, key
    ref = manifest["config"]["model"]

    def compare(ours, theirs, path):
        for k, v in theirs.items():
            if k in ("bfloat16", "bfloat16_output") or f"{path}{k}" in ALPHAFOLD_KEYS_NOT_USED:
                continue
            assert k in ours, f"{path}{k} missing"
            if isinstance(v, dict):
                compare(ours[k], v, f"{path}{k}.")
            else:
                assert ours[k] == v and type(ours[k]) is type(v), f"{path}{k}: {ours[k]!r} vs {v!r}"

    compare(cfg.model, ref, "model.")


def test_relative_encoding(multimer_reference):
    io, params = multimer_reference("relative_encoding")
    module = RelativeEncoding(EMB)
    args = [jnp.asarray(io[f"input/{k}"]) for k in ("residue_index", "asym_id", "entity_id", "sym_id")]
    out, state = module.apply({"params": params["evoformer"]["~_relative_encoding"]}, *args, mutable=["intermediates"])
    np.testing.assert_array_equal(np.asarray(state["intermediates"]["rel_feat"][0]), io["output/rel_feat"])
    assert_close_on(out, io["output/pair"], None, ATOL_TRUNK, what="relative encoding")


@pytest.mark.parametrize("name", ["triangle_multiplication_outgoing", "triangle_multiplication_incoming"])
def test_fused_triangle_multiplication(multimer_reference, name):
    io, params = multimer_reference(name)
    module = TriangleMultiplication(EMB.evoformer[name], GC)
    out = module.apply({"params": params[name]}, io["input/pair"], io["input/pair_mask"])
    assert_close_on(out, io["output/update"], valid_2d(out.shape), ATOL_TRUNK, what=name)


@pytest.mark.parametrize(
    "name,scope,extra",
    [("evoformer_iteration", "evoformer_iteration", False), ("extra_msa_stack_iteration", "extra_msa_stack", True)],
)
def test_evoformer_iterations(multimer_reference, name, scope, extra):
    io, params = multimer_reference(name)
    module = EvoformerIteration(EMB.evoformer, GC, is_extra_msa=extra)
    (msa, pair), _ = module.apply(
        {"params": params[scope]}, (io["input/msa"], io["input/pair"]), io["input/msa_mask"], io["input/pair_mask"]
    )
    assert_close_on(msa, io["output/msa"], valid_rows(msa.shape, 1), ATOL_TRUNK, what=f"{name} msa")
    assert_close_on(pair, io["output/pair"], valid_2d(pair.shape), ATOL_TRUNK, what=f"{name} pair")


def test_template_embedding(multimer_reference):
    io, params = multimer_reference("template_embedding")
    module = TemplateEmbedding(EMB.template, GC)
    batch = {
        k: jnp.asarray(io[f"input/{k}"])
        for k in ("template_aatype", "template_all_atom_positions", "template_all_atom_mask")
    }
    out = module.apply(
        {"params": params["template_embedding"]},
        jnp.asarray(io["input/query_embedding"]),
        batch,
        jnp.asarray(io["input/padding_mask_2d"]),
        jnp.asarray(io["input/multichain_mask_2d"]),
    )
    assert_close_on(out, io["output/embedding"], valid_2d(out.shape), ATOL_TRUNK, what="template embedding")


class _Template1d(nn.Module):
    @nn.compact
    def __call__(self, batch):
        return template_embedding_1d(batch, EMB.msa_channel, jnp.float32)


def test_template_embedding_1d(multimer_reference):
    io, params = multimer_reference("template_embedding_1d")
    batch = {
        k: jnp.asarray(io[f"input/{k}"])
        for k in ("template_aatype", "template_all_atom_positions", "template_all_atom_mask")
    }
    act, mask = _Template1d().apply({"params": params}, batch)
    np.testing.assert_array_equal(np.asarray(mask)[:, :NUM_VALID], io["output/mask"][:, :NUM_VALID])
    assert_close_on(act, io["output/activations"], valid_rows(act.shape, 1), ATOL_TRUNK, what="template 1d")


def test_invariant_point_attention(multimer_reference):
    io, params = multimer_reference("invariant_point_attention")
    module = InvariantPointAttentionMultimer(SM, GC)
    out = module.apply(
        {"params": params["invariant_point_attention"]},
        io["input/inputs_1d"],
        io["input/inputs_2d"],
        io["input/mask"],
        rigid_input(io),
    )
    assert_close_on(out, io["output/update"], valid_rows(out.shape), ATOL_SM, what="IPA")


def _compare_rigids(array, expected, lead: int, what: str):
    """`[..., 3, 4]` rigids: rotations at the activation tolerance, translations at the position one."""
    array = np.asarray(array)
    assert_close_on(
        array[..., :3], expected[..., :3], valid_rows(array[..., :3].shape, lead), ATOL_SM, what=f"{what} rotation"
    )
    assert_close_on(
        array[..., 3], expected[..., 3], valid_rows(array[..., 3].shape, lead), ATOL_SM_POS, what=f"{what} translation"
    )


def _compare_sidechains(sc, io, prefix, lead: int = 0):
    """Side-chain outputs; `lead` leading (layer) axes precede the residue axis."""
    for key, atol in (("angles_sin_cos", ATOL_SM), ("unnormalized_angles_sin_cos", ATOL_SM), ("atom_pos", ATOL_SM_POS)):
        value = np.asarray(sc[key])
        assert_close_on(value, io[f"{prefix}{key}"], valid_rows(value.shape, lead), atol, what=key)
    _compare_rigids(sc["frames"], io[f"{prefix}frames"], lead, "sidechain frames")


def test_fold_iteration(multimer_reference):
    from jaxfold.model.structure_module_multimer import rigid_to_array  # noqa: PLC0415

    io, params = multimer_reference("fold_iteration")
    module = FoldIterationMultimer(SM, GC)
    activations = {"act": jnp.asarray(io["input/act"]), "rigid": rigid_input(io)}
    new, out = module.apply(
        {"params": params["fold_iteration"]},
        activations,
        io["input/sequence_mask"],
        io["input/initial_act"],
        io["input/static_feat_2d"],
        io["input/aatype"],
    )
    assert_close_on(new["act"], io["output/activations/act"], valid_rows((18, 384)), ATOL_SM, what="act")
    for name, rigid in (("activations/rigid", new["rigid"]), ("outputs/rigid", out["rigid"])):
        _compare_rigids(rigid_to_array(rigid), io[f"output/{name}"], 0, name)
    sc = dict(out["sc"], atom_pos=out["sc"]["atom_pos"].to_array(), frames=rigid_to_array(out["sc"]["frames"]))
    _compare_sidechains(sc, io, "output/outputs/sc/")


def test_structure_module(multimer_reference):
    io, params = multimer_reference("structure_module")
    module = StructureModuleMultimer(SM, GC)
    out = module.apply(
        {"params": params["structure_module"]},
        {"single": io["input/single"], "pair": io["input/pair"]},
        {"seq_mask": io["input/seq_mask"], "aatype": io["input/aatype"]},
    )
    assert_close_on(out["act"], io["output/act"], valid_rows((18, 384)), ATOL_SM, what="act")
    for key in ("final_atom14_mask", "final_atom_mask"):
        np.testing.assert_array_equal(np.asarray(out[key]), io[f"output/{key}"])
    for key in ("final_atom14_positions", "final_atom_positions"):
        assert_close_on(out[key], io[f"output/{key}"], valid_rows(out[key].shape), ATOL_SM_POS, what=key)
    for key, lead in (("traj", 1), ("final_rigids", 0)):
        _compare_rigids(out[key], io[f"output/{key}"], lead, key)
    _compare_sidechains(out["sidechains"], io, "output/sidechains/", lead=1)


class _Heads(nn.Module):
    @nn.compact
    def __call__(self, representations, batch):
        heads = CONFIG.model.heads
        return {
            name: cls(heads[name], GC, name=scope)(representations, batch)
            for name, (cls, scope) in HEADS.items()
            if heads[name].weight
        }


def test_heads_and_confidence(multimer_reference):
    io, params = multimer_reference("heads")
    representations = {k: jnp.asarray(io[f"input/{k}"]) for k in ("single", "pair", "msa", "structure_module")}
    out = _Heads().apply({"params": params}, representations, {"asym_id": jnp.asarray(io["input/asym_id"])})
    out = jax.tree_util.tree_map(np.asarray, out)
    for head, values in out.items():
        for key, value in values.items():
            ref_key = f"output/{head}/{key}"
            if ref_key in io:
                assert_close_on(value, io[ref_key], None, ATOL_TRUNK, what=ref_key)
    np.testing.assert_array_equal(out["predicted_aligned_error"]["asym_id"], io["input/asym_id"])
    confidence = get_confidence_metrics(out, multimer_mode=True)
    for key in ("ptm", "iptm", "ranking_confidence"):
        assert_close_on(confidence[key], io[f"output/confidence/{key}"], None, 1e-5, what=key)
    assert_close_on(confidence["plddt"], io["output/confidence/plddt"], None, 1e-3, what="plddt")
    assert_close_on(
        confidence["predicted_aligned_error"], io["output/confidence/predicted_aligned_error"], None, 1e-3, what="pae"
    )


def test_bad_multimer_inputs_are_clear_errors():
    from jaxfold.model import run_alphafold  # noqa: PLC0415
    from jaxfold.model.alphafold_multimer import AlphaFoldIterationMultimer  # noqa: PLC0415

    ensembled = model_config("model_1_multimer_v3", **{"model.num_ensemble_eval": 2})
    with pytest.raises(ValueError, match="ensembling"):
        AlphaFoldIterationMultimer(ensembled.model).init(jax.random.PRNGKey(0), {}, None)
    with pytest.raises(ValueError, match="rng is only used by multimer"):
        run_alphafold(model_config("model_1_ptm"), {}, {}, rng=jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="bfloat16 must be a bool"):
        model_config("model_1_multimer_v3", **{"model.global_config.bfloat16": "yes"})
    with pytest.raises(ValueError, match="seq_mask must be"):
        StructureModuleMultimer(SM, GC).init(
            jax.random.PRNGKey(0),
            {"single": jnp.zeros((3, 384)), "pair": jnp.zeros((3, 3, 128))},
            {"seq_mask": jnp.ones((1, 3)), "aatype": jnp.zeros(3, jnp.int32)},
        )


def test_chunked_multimer_modules_match(multimer_reference):
    """With `global_config.chunk_size` (row-chunked attention, transitions, outer product mean, template stack)
    the multimer Evoformer block and template embedder still give DeepMind's outputs."""
    chunked_gc = CONFIG.replace(**{"model.global_config.chunk_size": 5}).model.global_config
    io, params = multimer_reference("evoformer_iteration")
    module = EvoformerIteration(EMB.evoformer, chunked_gc)
    (msa, pair), _ = module.apply(
        {"params": params["evoformer_iteration"]},
        (io["input/msa"], io["input/pair"]),
        io["input/msa_mask"],
        io["input/pair_mask"],
    )
    assert_close_on(msa, io["output/msa"], valid_rows(msa.shape, 1), ATOL_TRUNK, what="chunked msa")
    assert_close_on(pair, io["output/pair"], valid_2d(pair.shape), ATOL_TRUNK, what="chunked pair")
    io, params = multimer_reference("template_embedding")
    batch = {
        k: jnp.asarray(io[f"input/{k}"])
        for k in ("template_aatype", "template_all_atom_positions", "template_all_atom_mask")
    }
    out = TemplateEmbedding(EMB.template, chunked_gc).apply(
        {"params": params["template_embedding"]},
        jnp.asarray(io["input/query_embedding"]),
        batch,
        jnp.asarray(io["input/padding_mask_2d"]),
        jnp.asarray(io["input/multichain_mask_2d"]),
    )
    assert_close_on(out, io["output/embedding"], valid_2d(out.shape), ATOL_TRUNK, what="chunked template embedding")
