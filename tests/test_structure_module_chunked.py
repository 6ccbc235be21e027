"""The structure module with `global_config.chunk_size` > 0 (IPA attention in query-row chunks, the pair kept
in its dtype and layer-normed per chunk) against the unchunked path and DeepMind's IPA reference
(shared/reference/modules, 23 residues, the last 2 padding), plus compiled-temporary sizes. The chunked fold
iteration and structure module are compared with DeepMind's outputs in test_structure_module.py."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference_utils import assert_close_on, module_reference
from structure_module_utils import (
    ATOL_SM,
    GC,
    GC_CHUNKED,
    SM,
    residue_valid,
    run_structure_module,
)

from jaxfold.common.geometry import Rigid, Rot3, Vec3
from jaxfold.config import model_config
from jaxfold.model.primitives import layer_norm
from jaxfold.model.structure_module import InvariantPointAttention

# Chunked vs unchunked: the same float32 arithmetic on row slices (matmul shapes differ, so not bit-equal).
ATOL_SAME = 2e-5


def ipa_inputs(io):
    rigid = Rigid(
        Rot3.from_array(jnp.asarray(io["input/rotation"])), Vec3.from_array(jnp.asarray(io["input/translation"]))
    )
    return io["input/inputs_1d"], io["input/inputs_2d"], io["input/mask"], rigid


def test_chunked_ipa_matches_deepmind_and_unchunked(shared_dir):
    io, params = module_reference(shared_dir, "invariant_point_attention")
    variables = {"params": params["invariant_point_attention"]}
    whole = jax.jit(InvariantPointAttention(SM, GC).apply)(variables, *ipa_inputs(io))
    chunked = jax.jit(InvariantPointAttention(SM, GC_CHUNKED).apply)(variables, *ipa_inputs(io))
    valid = residue_valid(chunked.shape, 0)
    assert_close_on(chunked, io["output/update"], valid, ATOL_SM, what="chunked ipa update")
    np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=ATOL_SAME)


def test_chunked_ipa_normalises_a_raw_bfloat16_pair_per_chunk(shared_dir):
    """`pair_norm` given: the raw pair (here bfloat16) is layer-normed in float32 inside each chunk, which
    must equal normalising the float32 cast of the whole pair first."""
    io, params = module_reference(shared_dir, "invariant_point_attention")
    variables = {"params": params["invariant_point_attention"]}
    inputs_1d, _, mask, rigid = ipa_inputs(io)
    rng = np.random.default_rng(0)
    raw = jnp.asarray(rng.normal(1.0, 3.0, size=io["input/inputs_2d"].shape), jnp.bfloat16)
    scale = jnp.asarray(rng.normal(1.0, 0.2, size=raw.shape[-1]), jnp.float32)
    offset = jnp.asarray(rng.normal(0.0, 0.2, size=raw.shape[-1]), jnp.float32)
    normed = layer_norm(raw.astype(jnp.float32), scale, offset)
    expected = jax.jit(InvariantPointAttention(SM, GC).apply)(variables, inputs_1d, normed, mask, rigid)
    chunked = jax.jit(InvariantPointAttention(SM, GC_CHUNKED).apply)(
        variables, inputs_1d, raw, mask, rigid, (scale, offset)
    )
    np.testing.assert_allclose(chunked, expected, rtol=1e-5, atol=ATOL_SAME)


def test_chunked_ipa_gradients_match_unchunked(shared_dir):
    """Training with chunk_size: gradients through the chunked loop (gathered pair rows included) equal the
    unchunked ones."""
    io, params = module_reference(shared_dir, "invariant_point_attention")
    variables = {"params": params["invariant_point_attention"]}
    inputs_1d, inputs_2d, mask, rigid = ipa_inputs(io)

    def loss(global_config):
        def f(variables, inputs_1d, inputs_2d):
            out = InvariantPointAttention(SM, global_config).apply(variables, inputs_1d, inputs_2d, mask, rigid)
            return jnp.sum(jnp.sin(out) * mask)

        return jax.jit(jax.grad(f, argnums=(0, 1, 2)))

    whole = loss(GC)(variables, inputs_1d, inputs_2d)
    chunked = loss(GC_CHUNKED)(variables, inputs_1d, inputs_2d)
    for w, c in zip(jax.tree_util.tree_leaves(whole), jax.tree_util.tree_leaves(chunked)):
        assert np.abs(np.asarray(w)).max() > 0
        np.testing.assert_allclose(c, w, rtol=1e-4, atol=1e-5)


def test_ipa_rejects_a_pair_of_the_wrong_size(shared_dir):
    io, params = module_reference(shared_dir, "invariant_point_attention")
    inputs_1d, inputs_2d, mask, rigid = ipa_inputs(io)
    with pytest.raises(ValueError, match="does not match 23 residues"):
        InvariantPointAttention(SM, GC_CHUNKED).apply(
            {"params": params["invariant_point_attention"]}, inputs_1d, inputs_2d[:, :20], mask, rigid
        )


def test_chunked_structure_module_on_a_bfloat16_pair_matches_unchunked(shared_dir):
    """A bfloat16 trunk pair: chunked keeps it bfloat16 and normalises per chunk, unchunked casts it whole
    to float32 first; the float32 values seen by the layer norm are the same."""
    *_, whole = run_structure_module(shared_dir, GC, jnp.bfloat16)
    *_, chunked = run_structure_module(shared_dir, GC_CHUNKED, jnp.bfloat16)
    for key, atol in (("act", ATOL_SAME), ("final_affines", ATOL_SAME), ("final_atom_positions", 1e-4)):
        assert_close_on(chunked[key], whole[key], residue_valid(whole[key].shape, 0), atol, rtol=1e-5, what=key)


def ipa_temp_bytes(global_config, num_res: int, pair_dtype, pair_norm: bool) -> int:
    """XLA's temporaries for one IPA at `num_res` residues with real widths (shapes only, nothing runs)."""
    module = InvariantPointAttention(SM, global_config)

    def ipa(method, *args):
        def run(variables, inputs_1d, inputs_2d, mask, rotation, translation, *norm):
            rigid = Rigid(Rot3.from_array(rotation), Vec3.from_array(translation))
            return method(variables, inputs_1d, inputs_2d, mask, rigid, *norm)

        return run(*args)

    args = (
        jax.ShapeDtypeStruct((num_res, SM.num_channel), jnp.float32),
        jax.ShapeDtypeStruct((num_res, num_res, 128), pair_dtype),
        jax.ShapeDtypeStruct((num_res, 1), jnp.float32),
        jax.ShapeDtypeStruct((num_res, 3, 3), jnp.float32),
        jax.ShapeDtypeStruct((num_res, 3), jnp.float32),
    )
    if pair_norm:
        args += ((jax.ShapeDtypeStruct((128,), jnp.float32),) * 2,)
    params = jax.eval_shape(lambda *a: ipa(lambda v, *x: module.init(jax.random.PRNGKey(0), *x), None, *a), *args)
    apply = jax.jit(lambda p, *a: ipa(module.apply, p, *a))
    return apply.lower(params, *args).compile().memory_analysis().temp_size_in_bytes


def test_chunked_ipa_temporaries_shrink():
    """N=256: unchunked IPA materialises [H, N, N, P] point distances, [H, N, N] logits and the pair bias;
    with 16 query rows per chunk, the raw pair normalised inside, temporaries are O(16 * N * (H*P + c_z)):
    under a quarter of the unchunked ones and of one float32 [N, N, c_z] pair."""
    num_res = 256
    whole = ipa_temp_bytes(GC, num_res, jnp.float32, pair_norm=False)
    gc16 = model_config("model_1_ptm", chunk_size=16).model.global_config
    chunked = ipa_temp_bytes(gc16, num_res, jnp.float32, pair_norm=True)
    pair_bytes = num_res * num_res * 128 * 4
    print(f"IPA N={num_res}: temp bytes unchunked {whole}, chunked(16) {chunked}; one f32 pair {pair_bytes}")
    assert chunked < 0.25 * whole
    assert chunked < 0.25 * pair_bytes
