"""Triangle multiplication: fused Pallas kernel (interpret mode on CPU) vs the model's XLA path, chunking,
DAP, DeepMind's module references, and a CUDA lowering check.

Tolerances: float32 kernel vs XLA path within 1e-5 of the largest output / gradient magnitude (relative to
that magnitude, per array). bf16 inputs: both the kernel and the XLA path run in bf16 and are compared with
the float32 XLA path on the same (bf16-valued) inputs; the kernel must be within 3e-2 of the largest
magnitude (gradients: 1e-1, as the summed weight gradients of the XLA bf16 path are ~4e-2 off themselves)
and no worse than 2x (+1e-3) the XLA bf16 path's own error (the kernel rounds once, after fp32
LayerNorm/projection/gate, where XLA rounds after each op). Module references: the README's fp32 trunk
tolerance (atol 5e-5, rtol 1e-4 on valid positions).
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from reference_utils import ATOL_TRUNK, assert_close_on, module_reference

from jaxfold.config import model_config
from jaxfold.model.triangle_multiplication import (
    OutputWeights,
    TriangleMultiplication,
    triangle_update,
    triangle_update_xla,
)
from jaxfold.parallel.mesh import dap_for_mesh, make_mesh
from pallas_kernels import _compat
from pallas_kernels import triangle_multiplication as ptm

pytestmark = [
    pytest.mark.filterwarnings("ignore:The Pallas Triton backend is deprecated"),
    pytest.mark.usefixtures("ieee_fp32_dots"),
]

CONFIG = model_config("model_1_ptm")
EVO = CONFIG.model.embeddings_and_evoformer.evoformer
EQ = {True: "ikc,jkc->ijc", False: "kjc,kic->ijc"}
NAMES = ("triangle_multiplication_outgoing", "triangle_multiplication_incoming")
F32_TOL = 1e-5
BF16_TOL = 3e-2
BF16_GRAD_TOL = 1e-1  # weight gradients sum N^2 bf16 terms: the XLA bf16 path itself is ~4e-2 off


def global_config(**overrides):
    return CONFIG.replace(**{f"model.global_config.{k}": v for k, v in overrides.items()}).model.global_config


def random_case(seed, ni, nj, nk, c, cz, outgoing, dtype=jnp.float32, mask_rate=0.2):
    """Masked, gated-looking operands (masked rows/columns are exactly zero, as the module makes them)."""
    ks = jax.random.split(jax.random.key(seed), 10)
    left_shape, right_shape = ((ni, nk, c), (nj, nk, c)) if outgoing else ((nk, nj, c), (nk, ni, c))
    keep_k = (jax.random.uniform(ks[9], (nk,)) > mask_rate).astype(jnp.float32)
    k_axis = 1 if outgoing else 0
    left = jax.random.normal(ks[0], left_shape) * jnp.expand_dims(keep_k, (1 - k_axis, 2))
    right = jax.random.normal(ks[1], right_shape) * jnp.expand_dims(keep_k, (1 - k_axis, 2))
    gate_input = jax.random.normal(ks[2], (ni, nj, cz))
    w = OutputWeights(
        1 + 0.1 * jax.random.normal(ks[3], (c,)),
        0.1 * jax.random.normal(ks[4], (c,)),
        jax.random.normal(ks[5], (c, cz)) / np.sqrt(c),
        0.1 * jax.random.normal(ks[6], (cz,)),
        jax.random.normal(ks[7], (cz, cz)) / np.sqrt(cz),
        1 + 0.1 * jax.random.normal(ks[8], (cz,)),
    )
    rnd = lambda x: x.astype(dtype).astype(jnp.float32)  # noqa: E731  (bf16-representable values)
    return rnd(left), rnd(right), rnd(gate_input), w


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def kernel_fn(outgoing, **kw):
    return lambda l, r, g, w: ptm.triangle_multiplication(l, r, g, *w, outgoing=outgoing, **kw)


def xla_fn(outgoing):
    return lambda l, r, g, w: triangle_update_xla(l, r, g, w, EQ[outgoing])


def loss_and_grads(fn, args, cot_seed=7):
    out, vjp = jax.vjp(fn, *args)
    cot = jax.random.normal(jax.random.key(cot_seed), out.shape).astype(out.dtype)
    return out, vjp(cot)


# --------------------------------------------------------------------------------------------------------
# Kernel vs the model's XLA path
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outgoing", [True, False])
@pytest.mark.parametrize(
    "ni,nj,nk,c,cz,tiles",
    [
        (23, 23, 23, 16, 32, None),  # ragged everywhere, default tiles (clamped)
        # I != J (a DAP slice), several tiles, ragged row groups, c / c_z not powers of two:
        (40, 24, 33, 24, 20, ptm.Tiles(bm=16, bn=16, bk=16, bj=16, epilogue_rows=3)),
    ],
)
def test_kernel_matches_xla_path_fp32_values_and_gradients(outgoing, ni, nj, nk, c, cz, tiles):
    args = random_case(1, ni, nj, nk, c, cz, outgoing)
    out, grads = loss_and_grads(kernel_fn(outgoing, tiles=tiles), args)
    ref, ref_grads = loss_and_grads(xla_fn(outgoing), args)
    assert out.shape == (ni, nj, cz)
    assert rel_err(out, ref) < F32_TOL
    for name, g, r in zip(("left", "right", "gate_input", "weights"), grads, ref_grads):
        for leaf, leaf_ref in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(r)):
            assert rel_err(leaf, leaf_ref) < F32_TOL, name


@pytest.mark.parametrize("outgoing", [True, False])
def test_kernel_with_xla_product_matches(outgoing):
    args = random_case(2, 19, 21, 17, 16, 16, outgoing)
    out, grads = loss_and_grads(kernel_fn(outgoing, product="xla"), args)
    ref, ref_grads = loss_and_grads(xla_fn(outgoing), args)
    assert rel_err(out, ref) < F32_TOL
    for g, r in zip(jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(ref_grads)):
        assert rel_err(g, r) < F32_TOL


@pytest.mark.parametrize("outgoing", [True, False])
def test_kernel_bf16_values_and_gradients(outgoing):
    l, r, g, w = random_case(3, 24, 24, 24, 32, 32, outgoing, dtype=jnp.bfloat16)
    ref, ref_grads = loss_and_grads(xla_fn(outgoing), (l, r, g, w))
    bf = lambda x: x.astype(jnp.bfloat16)  # noqa: E731
    args16 = (bf(l), bf(r), bf(g), w)  # parameters stay fp32, as in the model (cast at use)
    out, grads = loss_and_grads(kernel_fn(outgoing), args16)
    xla_out, xla_grads = loss_and_grads(xla_fn(outgoing), args16)
    assert out.dtype == jnp.bfloat16
    err, xla_err = rel_err(out, ref), rel_err(xla_out, ref)
    assert err < BF16_TOL and err <= 2 * xla_err + 1e-3, (err, xla_err)
    for g_k, g_x, g_r in zip(
        jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(xla_grads), jax.tree_util.tree_leaves(ref_grads)
    ):
        err, xla_err = rel_err(g_k, g_r), rel_err(g_x, g_r)
        assert err < BF16_GRAD_TOL and err <= 2 * xla_err + 1e-3, (err, xla_err)


def test_masked_residues_contribute_nothing():
    """Zeroing a masked residue's operand rows changes nothing else; arbitrary values there would."""
    l, r, g, w = random_case(4, 16, 16, 16, 16, 16, True, mask_rate=0.0)
    out = kernel_fn(True)(l, r, g, w)
    l2, r2 = l.at[:, 5].set(0.0), r.at[:, 5].set(0.0)  # residue k=5 masked out
    out2 = kernel_fn(True)(l2, r2, g, w)
    ref2 = xla_fn(True)(l2, r2, g, w)
    assert rel_err(out2, ref2) < F32_TOL
    assert rel_err(out2, out) > 1e-3  # the mask did change the result


def test_bad_inputs_are_clear_errors():
    l, r, g, w = random_case(5, 8, 8, 8, 16, 16, True)
    with pytest.raises(ValueError, match="contracted axis"):
        ptm.triangle_multiplication(l, r[:, :7], g, *w, outgoing=True)
    with pytest.raises(ValueError, match="gate_input"):
        ptm.triangle_multiplication(l, r, g[:7], *w, outgoing=True)
    with pytest.raises(ValueError, match="output_weights"):
        ptm.triangle_multiplication(l, r, g, *w[:2], w.output_weights[:8], *w[3:], outgoing=True)
    with pytest.raises(ValueError, match="product"):
        ptm.triangle_multiplication(l, r, g, *w, outgoing=True, product="cublas")
    with pytest.raises(ValueError, match="power of two"):
        ptm.Tiles(bm=48)
    with pytest.raises(ValueError, match="equation"):
        triangle_update(l, r, g, w, "ijc,jkc->ikc")


# --------------------------------------------------------------------------------------------------------
# The module: DeepMind's references, chunking, DAP
# --------------------------------------------------------------------------------------------------------


def run_module(name, io, params, **gc_overrides):
    module = TriangleMultiplication(EVO[name], global_config(**gc_overrides))
    return module.apply({"params": params[name]}, io["input/pair"], io["input/pair_mask"])


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize(
    "overrides",
    [dict(kernels="xla", chunk_size=5), dict(kernels="pallas", chunk_size=0), dict(kernels="pallas", chunk_size=8)],
)
def test_module_matches_deepmind(shared_dir, name, overrides):
    io, params = module_reference(shared_dir, name)
    update = run_module(name, io, params, **overrides)
    assert_close_on(
        update, io["output/update"], io["input/pair_mask"][..., None] > 0, ATOL_TRUNK, what=f"{name} {overrides}"
    )


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chunk_size", [1, 5, 16])
def test_chunked_equals_unchunked(shared_dir, name, chunk_size):
    """23 rows in slices of 1 / 5 (ragged, padded) / 16: same values; gradients too for one size."""
    io, params = module_reference(shared_dir, name)
    whole = run_module(name, io, params, kernels="xla", chunk_size=0)
    sliced = run_module(name, io, params, kernels="xla", chunk_size=chunk_size)
    np.testing.assert_allclose(sliced, whole, rtol=1e-6, atol=1e-6)
    if chunk_size == 5:

        def loss(p, cs):
            module = TriangleMultiplication(EVO[name], global_config(kernels="xla", chunk_size=cs))
            return jnp.sum(jnp.sin(module.apply({"params": p}, io["input/pair"], io["input/pair_mask"])))

        g0 = jax.grad(loss)(params[name], 0)
        g5 = jax.grad(loss)(params[name], 5)
        for a, b in zip(jax.tree_util.tree_leaves(g5), jax.tree_util.tree_leaves(g0)):
            assert rel_err(a, b) < 1e-5


def test_chunked_product_temporaries_are_one_chunk(shared_dir):
    """With chunk_size 4 no [N, N, c]-sized float array is produced inside the chunk loop's body."""
    name = NAMES[0]
    io, params = module_reference(shared_dir, name)
    module = TriangleMultiplication(EVO[name], global_config(kernels="xla", chunk_size=4))
    f = lambda p, a, m: module.apply({"params": p}, a, m)  # noqa: E731
    jaxpr = jax.make_jaxpr(f)(params[name], io["input/pair"], io["input/pair_mask"])
    loops = [e for e in jaxpr.eqns if e.primitive.name == "scan"]
    assert loops, "no chunk loop"
    body = loops[0].params["jaxpr"].jaxpr
    n = io["input/pair"].shape[0]
    # Every product/LayerNorm/projection temporary is [N, N, 128]-sized unchunked; a 4-row slice holds at most
    # 4 * 23 * 128 elements, well under the N * N * 64 threshold. The only full-size value in the loop is the
    # output itself, which each slice is written into (`dynamic_update_slice`, in place).
    big = [
        (e.primitive.name, tuple(v.aval.shape))
        for e in body.eqns
        for v in e.outvars
        if hasattr(v.aval, "shape") and np.prod(v.aval.shape) >= n * n * 64
    ]
    assert big and all(name == "dynamic_update_slice" for name, _ in big), big


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("kernels,chunk_size", [("xla", 5), ("xla", 0), ("pallas", 5), ("pallas", 0)])
def test_dap_sharded_equals_unsharded(shared_dir, name, kernels, chunk_size):
    """DAP 2 (outgoing on row slices, incoming on column slices, the other operand all-gathered), chunked
    and not, with the XLA path and with the fused kernels (their outputs typed varying over `dap`:
    `pallas_kernels/_vma.py`)."""
    io, params = module_reference(shared_dir, name)
    n = io["input/pair"].shape[0]
    pad = (-n) % 2
    pair = np.pad(io["input/pair"], ((0, pad), (0, pad), (0, 0)))
    mask = np.pad(io["input/pair_mask"], ((0, pad), (0, pad)))
    axis = 0 if name.endswith("outgoing") else 1
    mesh = make_mesh("2x1", jax.devices()[:2])
    dap = dap_for_mesh(mesh)
    gc = global_config(kernels=kernels, chunk_size=chunk_size)
    module = TriangleMultiplication(EVO[name], gc, dap)

    def body(p, act, m):
        out = module.apply({"params": p}, dap.scatter(act, axis), dap.scatter(m, axis))
        return dap.gather_replicated(out, axis)

    sharded = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P(), P()), out_specs=P()))(params[name], pair, mask)
    whole = TriangleMultiplication(EVO[name], global_config(kernels="xla", chunk_size=0)).apply(
        {"params": params[name]}, pair, mask
    )
    valid = mask[..., None] > 0
    assert_close_on(sharded, whole, valid, 1e-5, what=f"DAP {name} {kernels}")


# --------------------------------------------------------------------------------------------------------
# CUDA lowering (no GPU needed)
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("outgoing", [True, False])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32])
def test_lowers_for_cuda(outgoing, dtype):
    """Forward + backward lower through Pallas' Triton path: product and epilogue forward, two product
    kernels in the backward (the epilogue backward is XLA)."""
    l, r, g, w = random_case(6, 40, 72, 56, 128, 128, outgoing)
    l, r, g = (x.astype(dtype) for x in (l, r, g))

    def f(l, r, g, w):
        out, vjp = jax.vjp(kernel_fn(outgoing, interpret=False), l, r, g, w)
        return out, vjp(out)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with _compat.cuda_lowering_context():
            text = jax.jit(f).trace(l, r, g, w).lower(lowering_platforms=("cuda",)).as_text()
    assert text.count("__gpu$xla.gpu.triton") == 4


@pytest.mark.slow
def test_evoformer_block_matches_deepmind_with_pallas_kernels(shared_dir):
    """The whole block with every Pallas kernel (attention, LayerNorm, triangle multiplication) interpreted."""
    from jaxfold.model.evoformer import EvoformerIteration  # noqa: PLC0415

    io, params = module_reference(shared_dir, "evoformer_iteration")
    block = EvoformerIteration(EVO, global_config(kernels="pallas"))
    (msa, pair), _ = block.apply(
        {"params": params["evoformer_iteration"]},
        (io["input/msa"], io["input/pair"]),
        io["input/msa_mask"],
        io["input/pair_mask"],
    )
    assert_close_on(msa, io["output/msa"], io["input/msa_mask"][..., None] > 0, ATOL_TRUNK, what="block msa")
    assert_close_on(pair, io["output/pair"], io["input/pair_mask"][..., None] > 0, ATOL_TRUNK, what="block pair")
