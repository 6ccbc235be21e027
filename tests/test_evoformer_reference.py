"""The trunk's modules against DeepMind's own outputs on the official parameter layout (shared/reference)."""

import jax
import numpy as np
import pytest
from reference_utils import ATOL_TRUNK, assert_close_on, module_reference

from jaxfold.config import model_config
from jaxfold.model.evoformer import EvoformerIteration
from jaxfold.model.msa_attention import MSAColumnAttention, MSAColumnGlobalAttention, MSARowAttentionWithPairBias
from jaxfold.model.outer_product_mean import OuterProductMean
from jaxfold.model.template import TemplatePairStack
from jaxfold.model.transition import Transition
from jaxfold.model.triangle_attention import TriangleAttention
from jaxfold.model.triangle_multiplication import TriangleMultiplication

CONFIG = model_config("model_1_ptm")
EVO = CONFIG.model.embeddings_and_evoformer.evoformer
GC = CONFIG.model.global_config


def msa_input(io):
    return io["input/msa"], io["input/msa_mask"]


def pair_input(io):
    return io["input/pair"], io["input/pair_mask"]


# name -> (module factory, call(module, params, io), which mask marks valid outputs)
SUB_MODULES = {
    "msa_row_attention_with_pair_bias": (
        lambda: MSARowAttentionWithPairBias(EVO.msa_row_attention_with_pair_bias, GC),
        lambda m, p, io: m.apply(p, *msa_input(io), io["input/pair"]),
        "msa",
    ),
    "msa_column_attention": (
        lambda: MSAColumnAttention(EVO.msa_column_attention, GC),
        lambda m, p, io: m.apply(p, *msa_input(io)),
        "msa",
    ),
    "msa_column_global_attention": (
        lambda: MSAColumnGlobalAttention(EVO.msa_column_attention, GC),
        lambda m, p, io: m.apply(p, *msa_input(io)),
        "msa",
    ),
    "msa_transition": (lambda: Transition(EVO.msa_transition, GC), lambda m, p, io: m.apply(p, *msa_input(io)), "msa"),
    "outer_product_mean": (
        lambda: OuterProductMean(EVO.outer_product_mean, GC, num_output_channel=128),
        lambda m, p, io: m.apply(p, *msa_input(io)),
        "pair",
    ),
    "pair_transition": (
        lambda: Transition(EVO.pair_transition, GC),
        lambda m, p, io: m.apply(p, *pair_input(io)),
        "pair",
    ),
    **{
        name: (
            (lambda name=name: TriangleMultiplication(EVO[name], GC)),
            lambda m, p, io: m.apply(p, *pair_input(io)),
            "pair",
        )
        for name in ("triangle_multiplication_outgoing", "triangle_multiplication_incoming")
    },
    **{
        name: (
            (lambda name=name: TriangleAttention(EVO[name], GC)),
            lambda m, p, io: m.apply(p, *pair_input(io)),
            "pair",
        )
        for name in ("triangle_attention_starting_node", "triangle_attention_ending_node")
    },
}


def valid_mask(io, kind):
    return (io["input/msa_mask"] if kind == "msa" else io["input/pair_mask"])[..., None] > 0


@pytest.mark.parametrize("name", sorted(SUB_MODULES))
def test_sub_module_matches_deepmind(shared_dir, name):
    make, call, kind = SUB_MODULES[name]
    io, params = module_reference(shared_dir, name)
    update = call(make(), {"params": params[name]}, io)
    assert_close_on(update, io["output/update"], valid_mask(io, kind), ATOL_TRUNK, what=name)


@pytest.mark.parametrize("name,is_extra_msa", [("evoformer_iteration", False), ("extra_msa_stack_iteration", True)])
def test_evoformer_block_matches_deepmind(shared_dir, name, is_extra_msa):
    io, params = module_reference(shared_dir, name)
    (scope,) = params  # 'evoformer_iteration' or 'extra_msa_stack'
    block = EvoformerIteration(EVO, GC, is_extra_msa=is_extra_msa)
    (msa, pair), _ = block.apply(
        {"params": params[scope]}, (io["input/msa"], io["input/pair"]), io["input/msa_mask"], io["input/pair_mask"]
    )
    assert_close_on(msa, io["output/msa"], valid_mask(io, "msa"), ATOL_TRUNK, what=f"{name} msa")
    assert_close_on(pair, io["output/pair"], valid_mask(io, "pair"), ATOL_TRUNK, what=f"{name} pair")


def test_template_pair_stack_matches_deepmind(shared_dir):
    io, params = module_reference(shared_dir, "template_pair_stack")
    stack = TemplatePairStack(CONFIG.model.embeddings_and_evoformer.template.template_pair_stack, GC)
    out = stack.apply({"params": params["template_pair_stack"]}, io["input/pair"], io["input/pair_mask"])
    assert_close_on(
        out, io["output/pair"], io["input/pair_mask"][..., None] > 0, ATOL_TRUNK, what="template_pair_stack"
    )


@pytest.mark.parametrize(
    "name,is_extra_msa,chunk,kernels",
    [
        ("evoformer_iteration", False, 5, "xla"),
        ("extra_msa_stack_iteration", True, 4, "xla"),
        ("evoformer_iteration", False, 8, "pallas"),  # what long chains run on a GPU (here in interpret mode)
    ],
)
def test_in_place_chunked_block_equals_unchunked(shared_dir, name, is_extra_msa, chunk, kernels):
    """chunk_size > 0 at inference updates the MSA and pair in place, a slice of rows or columns at a time
    (23 residues: whole slices and a shorter last one); the numbers must not change, and must still match
    DeepMind's block. With the Pallas kernels the triangle products read the channel-major whole operand."""
    io, params = module_reference(shared_dir, name)
    (scope,) = params
    args = ((io["input/msa"], io["input/pair"]), io["input/msa_mask"], io["input/pair_mask"])
    p = {"params": params[scope]}
    (msa, pair), _ = EvoformerIteration(EVO, GC, is_extra_msa=is_extra_msa).apply(p, *args)
    chunked_gc = CONFIG.replace(
        **{"model.global_config.chunk_size": chunk, "model.global_config.kernels": kernels}
    ).model.global_config
    block = EvoformerIteration(EVO, chunked_gc, is_extra_msa=is_extra_msa)
    (msa_c, pair_c), _ = block.apply(p, *args)
    np.testing.assert_allclose(msa_c, msa, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(pair_c, pair, atol=1e-5, rtol=1e-5)
    assert_close_on(msa_c, io["output/msa"], valid_mask(io, "msa"), ATOL_TRUNK, what=f"{name} msa, in place")
    assert_close_on(pair_c, io["output/pair"], valid_mask(io, "pair"), ATOL_TRUNK, what=f"{name} pair, in place")
    # The in-place path really runs: its program loops over slices and writes them back.
    jaxpr = str(jax.make_jaxpr(lambda p, *a: block.apply(p, *a))(p, *args))
    assert ("while" in jaxpr or "scan" in jaxpr) and "dynamic_update_slice" in jaxpr


@pytest.mark.parametrize("chunk_size", [0, 5])
def test_outer_product_mean_rows_are_bounded_by_bytes(shared_dir, monkeypatch, chunk_size):
    """Whatever the chunk size, the outer product mean builds at most `outer_product_rows` rows of float32
    `[rows, N, c, c]` outer products at a time (XLA holds two of them), and still equals DeepMind's."""
    from jaxfold.model import outer_product_mean as opm_module

    io, params = module_reference(shared_dir, "outer_product_mean")
    msa, mask = msa_input(io)
    num_res, c = msa.shape[1], EVO.outer_product_mean.num_outer_channel
    per_row = 2 * num_res * c * c * 4
    monkeypatch.setattr(opm_module, "OUTER_PRODUCT_BYTES_IN_FLIGHT", 3 * per_row)
    assert opm_module.outer_product_rows(num_res, num_res, c, chunk_size) == 3
    gc = CONFIG.replace(**{"model.global_config.chunk_size": chunk_size}).model.global_config
    module = OuterProductMean(EVO.outer_product_mean, gc, num_output_channel=128)
    update = module.apply({"params": params["outer_product_mean"]}, msa, mask)
    assert_close_on(update, io["output/update"], valid_mask(io, "pair"), ATOL_TRUNK, what="bounded outer product mean")
    compiled = jax.jit(lambda p, m, k: module.apply(p, m, k)).lower({"params": params["outer_product_mean"]}, msa, mask)
    temp = compiled.compile().memory_analysis().temp_size_in_bytes
    whole = num_res * per_row  # all rows at once
    assert temp < whole / 2, f"outer product mean temporaries {temp} B, all rows at once would be {whole} B"
